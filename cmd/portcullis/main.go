// Command portcullis is a database wire-protocol proxy that signs people and
// programs in with Microsoft Entra ID before they reach PostgreSQL or MySQL.
package main

import "os"

func main() { os.Exit(run(os.Args[1:], os.Environ(), os.Stdout, os.Stderr)) }

package main

import (
	"github.com/portcullisdb/portcullis/proxy"
	"github.com/portcullisdb/portcullis/proxy/mysql"
	"github.com/portcullisdb/portcullis/proxy/postgres"
)

// frontDoors are the protocols an in-process portcullis serves, as
// cmd/portcullis wires them. (A portcullis binary serves whatever it was
// built with; the harness finds out by starting it.)
func frontDoors() []proxy.Protocol {
	return []proxy.Protocol{postgres.New(), mysql.New()}
}

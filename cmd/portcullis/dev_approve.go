package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// devState is what a running `portcullis dev` leaves for `dev approve`: the
// simulator's URL and the CA that signed its certificate.
type devState struct {
	SimURL string `json:"sim_url"`
	CAFile string `json:"ca_file"`
}

func devStateDir() (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("find a cache directory for dev state: %w", err)
	}
	return filepath.Join(dir, "portcullis", "dev"), nil
}

func readDevState(dir string) (devState, error) {
	var st devState
	raw, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return st, fmt.Errorf("read dev state (is `portcullis dev` running?): %w", err)
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return st, fmt.Errorf("parse dev state %s: %w", dir, err)
	}
	return st, nil
}

func cmdDevApprove(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("dev approve", stderr)
	as := fs.String("as", "", "approve as this user (UPN), e.g. alice@contoso.example")
	decline := fs.Bool("decline", false, "decline the sign-in instead")
	stateDir := fs.String("state-dir", "", "where `portcullis dev` keeps its state (default: the user cache directory)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: portcullis dev approve CODE --as UPN [--decline]")
		fs.PrintDefaults()
	}
	// Accept the code before or after the flags.
	var code string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		code, args = args[0], args[1:]
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if code == "" && fs.NArg() > 0 {
		code = fs.Arg(0)
	}
	if code == "" || (*as == "" && !*decline) {
		fs.Usage()
		return &usageError{"dev approve needs a CODE and --as UPN"}
	}
	dir := *stateDir
	if dir == "" {
		var err error
		if dir, err = devStateDir(); err != nil {
			return err
		}
	}
	st, err := readDevState(dir)
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(st.CAFile)
	if err != nil {
		return fmt.Errorf("read simulator CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("simulator CA %s holds no certificate", st.CAFile)
	}
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
	}
	path, body := "/_sim/devicecode/approve", map[string]string{"user_code": code, "upn": *as}
	if *decline {
		path, body = "/_sim/devicecode/decline", map[string]string{"user_code": code}
	}
	payload, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, st.SimURL+path, bytes.NewReader(payload))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("reach the simulator at %s: %w", st.SimURL, err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		// The simulator's refusals are JSON with a message for people.
		var refusal struct {
			Message string `json:"message"`
		}
		if json.Unmarshal(answer, &refusal) == nil && refusal.Message != "" {
			return fmt.Errorf("the simulator refused: %s", refusal.Message)
		}
		return fmt.Errorf("the simulator refused: %s", strings.TrimSpace(string(answer)))
	}
	if *decline {
		fmt.Fprintf(stdout, "declined %s\n", code)
	} else {
		fmt.Fprintf(stdout, "approved %s as %s\n", code, *as)
	}
	return nil
}

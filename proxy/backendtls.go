package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"

	"github.com/portcullisdb/portcullis/config"
)

// BackendTLS builds the TLS configuration for res: nil for disable,
// encryption without verification for require, and verification of the
// chain (against CAFile, or the system roots) and of the name for
// verify-full.
func BackendTLS(res config.Resource) (*tls.Config, error) {
	mode := res.TLS.Mode
	if mode == "" {
		mode = defaultBackendTLS(res.Address)
	}
	switch mode {
	case config.BackendTLSDisable:
		return nil, nil
	case config.BackendTLSRequire:
		return &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}, nil
	case config.BackendTLSVerifyFull:
		host, _, err := net.SplitHostPort(res.Address)
		if err != nil {
			return nil, fmt.Errorf("address %q: %w", res.Address, err)
		}
		cfg := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
		if res.TLS.ServerName != "" {
			cfg.ServerName = res.TLS.ServerName
		}
		if res.TLS.CAFile != "" {
			pem, err := os.ReadFile(res.TLS.CAFile)
			if err != nil {
				return nil, fmt.Errorf("tls.ca_file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("tls.ca_file %s: no PEM certificate in it", res.TLS.CAFile)
			}
			cfg.RootCAs = pool
		}
		return cfg, nil
	}
	return nil, fmt.Errorf("tls.mode %q: want disable, require or verify-full", mode)
}

// defaultBackendTLS mirrors the configuration default, for a Resource
// built without it: verify across a network, nothing on this host.
func defaultBackendTLS(address string) string {
	host, _, err := net.SplitHostPort(address)
	if err == nil {
		if ip := net.ParseIP(host); (ip != nil && ip.IsLoopback()) || host == "localhost" {
			return config.BackendTLSDisable
		}
	}
	return config.BackendTLSVerifyFull
}

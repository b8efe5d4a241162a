package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/internal/logging"
	"github.com/portcullisdb/portcullis/proxy"
	"github.com/portcullisdb/portcullis/proxy/mysql"
	"github.com/portcullisdb/portcullis/proxy/postgres"
)

// startTimeout bounds start-up work that reaches Entra ID and Graph
// (discovery documents, group names to ids).
const startTimeout = 30 * time.Second

func cmdServe(ctx context.Context, args []string, e env, stdout, stderr io.Writer) error {
	fs := newFlagSet("serve", stderr)
	path := fs.String("config", "", "configuration file (default $"+config.EnvConfigFile+")")
	var sets multiFlag
	fs.Var(&sets, "set", "override a key, e.g. --set sessions.ttl=1h (repeatable; beats env and file)")
	logFormat := fs.String("log-format", "", "json or console (overrides log.format)")
	logLevel := fs.String("log-level", "", "debug, info, warn or error (overrides log.level)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *path == "" {
		*path = e.get(config.EnvConfigFile)
	}
	if *path == "" {
		return &usageError{"serve needs --config FILE (or $" + config.EnvConfigFile + ")"}
	}
	if *logFormat != "" {
		sets = append(sets, "log.format="+*logFormat)
	}
	if *logLevel != "" {
		sets = append(sets, "log.level="+*logLevel)
	}
	cfg, err := config.Load(*path, e, sets)
	if err != nil {
		return &configError{err}
	}
	log, err := logging.New(stdout, logging.Format(cfg.Log.Format), cfg.Log.Level)
	if err != nil {
		return &configError{err}
	}
	defer log.Sync() //nolint:errcheck // stdout may not support sync
	if needsCertificate(cfg) && cfg.TLS.CertFile == "" {
		return &configError{errors.New("a listener requires TLS but tls.cert_file and tls.key_file are not set")}
	}
	hup, stop := notifyReload()
	defer stop()
	return runProxy(ctx, cfg, log, nil, nil, &configSource{path: *path, env: e, sets: sets, hup: hup})
}

// notifyReload makes SIGHUP a request to re-read the configuration file
// (operate.go) until stop is called; without it the signal would end the
// process.
func notifyReload() (hup chan os.Signal, stop func()) {
	hup = make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	return hup, func() { signal.Stop(hup) }
}

// needsCertificate reports whether any listener may offer TLS.
func needsCertificate(cfg *config.Config) bool {
	for _, l := range cfg.Listeners {
		if l.TLS != config.ListenerTLSDisabled {
			return true
		}
	}
	return false
}

// runProxy runs the identity core and the listeners until ctx ends, then
// drains open sessions for proxy.drain_timeout. ready, if set, is called
// once every listener is about to accept, with the addresses they are
// bound to (in the order of cfg.Listeners; port 0 resolved). src, if set,
// is where cfg came from, for reloads (SIGHUP, the console's RELOAD).
func runProxy(ctx context.Context, cfg *config.Config, log *zap.Logger, clientTLS *tls.Config, ready func(addrs []net.Addr), src *configSource) error {
	ops := newOperations(cfg, log, src)
	st, totp, err := openState(ctx, cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	// The access keys are given explicitly: authDeps wraps the sign-in
	// store for metrics, which hides what else it can do.
	authz, err := auth.New(cfg, ops.authDeps(auth.Deps{Logger: log, Sessions: st, TOTP: totp, AccessKeys: st}))
	if err != nil {
		return &configError{err}
	}
	defer authz.Close()
	if err := ops.startAdmin(); err != nil {
		return err
	}
	defer ops.stopAdmin()
	ops.authz.Store(authz)
	startCtx, cancel := context.WithTimeout(ctx, startTimeout)
	err = authz.Start(startCtx)
	cancel()
	if err != nil {
		return fmt.Errorf("start the identity core: %w", err)
	}
	pg := postgres.New()
	srv, err := proxy.New(cfg, proxy.Deps{
		Authorizer: authz,
		Protocols:  []proxy.Protocol{pg, mysql.New()},
		Logger:     log,
		TLS:        clientTLS,
		Metrics:    ops.reg,
	})
	if err != nil {
		return &configError{err}
	}
	if err := ops.serve(authz, srv, pg); err != nil {
		return err
	}
	// Continuous authorization: open sessions are checked again every
	// authz.recheck until the listeners stop.
	recheckCtx, stopRecheck := context.WithCancel(ctx)
	defer stopRecheck()
	go srv.RecheckSessions(recheckCtx, authz, proxy.RecheckOptions{Every: cfg.Authz.Recheck, MaxFailures: cfg.Authz.RecheckFailures})
	ops.watchReload(ctx)
	// Open every listener before serving any, so that a port in use is a
	// start-up error rather than a half-served configuration.
	var lns []net.Listener
	for _, l := range cfg.Listeners {
		ln, err := net.Listen("tcp", l.Address)
		if err != nil {
			for _, open := range lns {
				open.Close()
			}
			return fmt.Errorf("listener %q: %w", l.Name, err)
		}
		lns = append(lns, ln)
	}
	served := make(chan error, len(lns))
	for i, ln := range lns {
		go func() { served <- srv.Serve(ctx, ln, cfg.Listeners[i]) }()
	}
	if ready != nil {
		addrs := make([]net.Addr, len(lns))
		for i, ln := range lns {
			addrs[i] = ln.Addr()
		}
		ready(addrs)
	}
	log.Info("portcullis started", logging.Event("server.started"), zap.String("version", version))
	var failed error
	select {
	case failed = <-served:
	case <-ctx.Done():
	}
	if failed != nil {
		srv.Close()
		return failed
	}
	// Drain: a second signal is not needed; Shutdown itself gives up after
	// drain_timeout and ends what is left.
	if err := srv.Shutdown(context.Background()); err != nil {
		return err
	}
	log.Info("portcullis stopped", logging.Event("server.stopped"))
	return nil
}

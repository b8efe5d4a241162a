package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"reflect"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
	"github.com/portcullisdb/portcullis/internal/logging"
	"github.com/portcullisdb/portcullis/internal/metrics"
	"github.com/portcullisdb/portcullis/proxy"
	"github.com/portcullisdb/portcullis/proxy/console"
	"github.com/portcullisdb/portcullis/proxy/postgres"
)

// configSource is where the running configuration came from, so that it
// can be read again: on SIGHUP (hup) and on the console's RELOAD.
type configSource struct {
	path string
	env  env
	sets []string
	// hup delivers SIGHUP; nil when the process does not reload on it.
	hup <-chan os.Signal
}

// operations is the operator's side of a running portcullis: metrics,
// the admin HTTP listener, readiness, reload and the admin console.
type operations struct {
	log *zap.Logger
	src *configSource
	reg *metrics.Registry

	cur   atomic.Pointer[config.Config]
	authz atomic.Pointer[auth.Authorizer]
	srv   atomic.Pointer[proxy.Server]

	// Learnt from the auth dependencies: the store's health and the TOTP
	// reset, when a state store is in use.
	storePing func(context.Context) error
	totp      console.TOTPResetter

	reloadMu sync.Mutex
	admin    *http.Server
	adminLn  net.Listener
	adminRun chan struct{}
}

func newOperations(cfg *config.Config, log *zap.Logger, src *configSource) *operations {
	o := &operations{log: log, src: src, reg: metrics.New(version)}
	o.cur.Store(cfg)
	return o
}

// authDeps completes the identity core's dependencies with the
// operator's instruments: each provider's HTTP client counts its requests
// to Entra ID and Graph, and the sign-in store (a memory one unless one
// is given) is timed. A store that can be pinged joins the readiness
// checks, and a TOTP checker that can reset enrolments serves the
// console's TOTP RESET.
func (o *operations) authDeps(d auth.Deps) auth.Deps {
	cfg := o.cur.Load()
	if d.HTTPClients == nil {
		d.HTTPClients = map[string]*http.Client{}
		for _, pc := range cfg.Providers {
			hc, err := auth.HTTPClientFor(pc)
			if err != nil {
				continue // auth.New reports the same error
			}
			hc.Transport = o.reg.Transport(pc.Name, hc.Transport)
			d.HTTPClients[pc.Name] = hc
		}
	}
	if d.Sessions == nil {
		d.Sessions = auth.NewMemorySessionStore()
	}
	if p, ok := d.Sessions.(interface{ Ping(context.Context) error }); ok {
		o.storePing = p.Ping
	}
	if p, ok := d.Sessions.(auth.PendingSignInStore); ok && d.PendingSignIns == nil {
		// The timing wrapper hides what else the store can do.
		d.PendingSignIns = p
	}
	d.Sessions = o.reg.SessionStore(d.Sessions)
	if t, ok := d.TOTP.(console.TOTPResetter); ok && t != nil {
		o.totp = t
	}
	return d
}

// startAdmin opens the admin HTTP listener (admin.address), if one is
// configured, before the identity core starts: /healthz answers at once
// and /readyz says what start-up is waiting for.
func (o *operations) startAdmin() error {
	addr := o.cur.Load().Admin.Address
	if addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("admin listener: %w", err)
	}
	o.adminLn = ln
	o.admin = &http.Server{
		Handler:           o.reg.AdminHandler(o.readinessChecks()),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          zap.NewStdLog(o.log.With(logging.Event("admin.http_error"))),
	}
	o.adminRun = make(chan struct{})
	go func() {
		defer close(o.adminRun)
		if err := o.admin.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			o.log.Error("admin listener failed", logging.Event("admin.failed"), zap.Error(err))
		}
	}()
	o.log.Info("admin listener started", logging.Event("admin.listening"), zap.String("address", ln.Addr().String()))
	return nil
}

// stopAdmin closes the admin listener, after the drain: probes and
// scrapes keep working while sessions end.
func (o *operations) stopAdmin() {
	if o.admin == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	o.admin.Shutdown(ctx) //nolint:errcheck // closing regardless
	<-o.adminRun
}

// readinessChecks are what /readyz requires: the configuration loaded,
// every provider's discovery and keys fetched, the listeners serving and
// not draining, and the state store answering (when there is one).
func (o *operations) readinessChecks() []metrics.Check {
	return []metrics.Check{
		{Name: "config", Run: func(context.Context) error {
			if o.cur.Load() == nil {
				return errors.New("no configuration loaded")
			}
			return nil
		}},
		{Name: "identity", Run: func(context.Context) error {
			a := o.authz.Load()
			if a == nil {
				return errors.New("identity core not created yet")
			}
			return a.Ready()
		}},
		{Name: "listeners", Run: func(context.Context) error {
			s := o.srv.Load()
			switch {
			case s == nil:
				return errors.New("not serving yet")
			case s.Draining():
				return errors.New("draining: no new connections are accepted")
			}
			return nil
		}},
		{Name: "store", Run: func(ctx context.Context) error {
			if o.storePing == nil {
				return nil // the in-memory store is always there
			}
			return o.storePing(ctx)
		}},
	}
}

// serve wires the running parts together once they exist: the console
// on the PostgreSQL protocol, the open connections into the metrics.
func (o *operations) serve(authz *auth.Authorizer, srv *proxy.Server, pg *postgres.Protocol) error {
	o.authz.Store(authz)
	o.srv.Store(srv)
	o.reg.WatchSessions(srv.Sessions)
	deps := console.Deps{
		Server: srv,
		Graph: func(provider string) (console.GraphSearcher, error) {
			gc, err := authz.GraphClient(provider)
			if err != nil {
				return nil, err
			}
			return gc, nil
		},
		Stats: func() []console.Stat {
			samples, err := o.reg.Snapshot()
			if err != nil {
				o.log.Warn("metrics could not be gathered", logging.Event("metrics.gather_failed"), zap.Error(err))
			}
			out := make([]console.Stat, len(samples))
			for i, s := range samples {
				out[i] = console.Stat{Name: s.Name, Labels: s.Labels, Value: s.Value}
			}
			return out
		},
		Logger: o.log,
	}
	if o.src != nil {
		deps.Reload = o.reload
	}
	if o.totp != nil {
		deps.TOTP = o.totp
	}
	cons, err := console.New(deps)
	if err != nil {
		return err
	}
	pg.Console = cons
	return nil
}

// watchReload reloads on every SIGHUP until ctx ends.
func (o *operations) watchReload(ctx context.Context) {
	if o.src == nil || o.src.hup == nil {
		return
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-o.src.hup:
				o.log.Info("reloading the configuration", logging.Event("config.reload_requested"), zap.String("trigger", "SIGHUP"))
				o.reload(ctx) //nolint:errcheck // logged inside
			}
		}
	}()
}

// reload re-reads the configuration file and puts its resources and
// admin groups in force for new connections; open sessions keep their
// backend connections and meet the new policy at their next recheck. An invalid file, or one the identity core cannot put in
// force (an unknown group, changed providers), is rejected with a
// config.reload_failed event naming the problems, and the running
// configuration stays. It returns a summary of what changed.
func (o *operations) reload(ctx context.Context) (string, error) {
	o.reloadMu.Lock()
	defer o.reloadMu.Unlock()
	authz, srv := o.authz.Load(), o.srv.Load()
	if o.src == nil || authz == nil || srv == nil {
		return "", errors.New("reload: portcullis has not finished starting")
	}
	fail := func(err error) (string, error) {
		o.reg.ConfigReloaded(err)
		fields := []zap.Field{logging.Event("config.reload_failed"), zap.String("file", o.src.path)}
		var ve *config.ValidationError
		if errors.As(err, &ve) {
			problems := make([]string, len(ve.Problems))
			for i, p := range ve.Problems {
				problems[i] = p.String()
			}
			fields = append(fields, zap.Strings("problems", problems))
		} else {
			fields = append(fields, zap.Error(err))
		}
		o.log.Error("configuration not reloaded; the running one stays", fields...)
		return "", err
	}
	cfg, err := config.Load(o.src.path, o.src.env, o.src.sets)
	if err != nil {
		return fail(err)
	}
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	if err := authz.Reload(ctx, cfg); err != nil {
		return fail(err)
	}
	if err := srv.Reload(cfg); err != nil {
		return fail(err)
	}
	old := o.cur.Swap(cfg)
	o.reg.ConfigReloaded(nil)

	added, removed, changed := resourceChanges(old, cfg)
	restart := restartRequired(old, cfg)
	o.log.Info("configuration reloaded", logging.Event("config.reloaded"), zap.String("file", o.src.path),
		zap.Strings("resources_added", added), zap.Strings("resources_removed", removed), zap.Strings("resources_changed", changed),
		zap.Strings("restart_required", restart))
	summary := fmt.Sprintf("configuration reloaded from %s: resources added %s, removed %s, changed %s",
		o.src.path, listOrNone(added), listOrNone(removed), listOrNone(changed))
	if len(restart) > 0 {
		summary += "; changes to " + strings.Join(restart, ", ") + " take effect only after a restart"
	}
	return summary, nil
}

// resourceChanges names the resources a reload adds, removes and
// changes.
func resourceChanges(old, cur *config.Config) (added, removed, changed []string) {
	before := map[string]config.Resource{}
	for _, r := range old.Resources {
		before[r.Name] = r
	}
	for _, r := range cur.Resources {
		prev, ok := before[r.Name]
		switch {
		case !ok:
			added = append(added, r.Name)
		case !reflect.DeepEqual(prev, r):
			changed = append(changed, r.Name)
		}
		delete(before, r.Name)
	}
	for name := range before {
		removed = append(removed, name)
	}
	sort.Strings(removed)
	return added, removed, changed
}

// restartRequired names the sections that differ and are read only at
// start-up.
func restartRequired(old, cur *config.Config) []string {
	var out []string
	for _, s := range []struct {
		key      string
		old, cur any
	}{
		{"listeners", old.Listeners, cur.Listeners},
		{"tls", old.TLS, cur.TLS},
		{"store", old.Store, cur.Store},
		{"sessions", old.Sessions, cur.Sessions},
		{"mfa", old.MFA, cur.MFA},
		{"service_principals", old.ServicePrincipals, cur.ServicePrincipals},
		{"authz", old.Authz, cur.Authz},
		{"admin.address", old.Admin.Address, cur.Admin.Address},
		{"proxy", old.Proxy, cur.Proxy},
		{"log", old.Log, cur.Log},
	} {
		if !reflect.DeepEqual(s.old, s.cur) {
			out = append(out, s.key)
		}
	}
	return out
}

func listOrNone(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

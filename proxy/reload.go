package proxy

import (
	"errors"

	"github.com/portcullisdb/portcullis/config"
)

// Reload makes cfg's resources the ones new connections are routed to.
// Open connections keep the resource they were given; listeners, TLS and
// limits are those the Server was created with (they need a restart).
// The Authorizer is reloaded separately, by whoever owns it, before this
// is called (auth.Authorizer.Reload), so that a resource is never offered
// before its policy is in force.
func (s *Server) Reload(cfg *config.Config) error {
	if cfg == nil {
		return errors.New("proxy: reload: no configuration")
	}
	c := *cfg
	s.current.Store(&c)
	return nil
}

// Config is the configuration new connections see: the one the Server
// was created with, or the latest Reload's. It is shared: do not modify
// it.
func (s *Server) Config() *config.Config { return s.current.Load() }

// Draining reports whether the Server has stopped accepting connections
// (Shutdown or Close was called), for a readiness probe.
func (s *Server) Draining() bool { return s.isClosing() }

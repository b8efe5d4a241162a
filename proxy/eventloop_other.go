//go:build !linux

package proxy

import (
	"time"

	"go.uber.org/zap"
)

// onEventLoop: the event loop is Linux's (epoll); elsewhere every session
// is relayed by goroutines.
func (c *Conn) onEventLoop(r *Relay) (out loopOutcome, handled bool, err error) {
	return out, false, nil
}

// inKernel: the kernel relay is Linux's (a SOCKMAP).
func (c *Conn) inKernel(r *Relay) (release func(), ok bool) { return nil, false }

// warnBusyPollQuota: busy polling is the event loop's.
func warnBusyPollQuota(*zap.Logger, time.Duration, int) {}

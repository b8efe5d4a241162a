//go:build !linux

package proxy

// onEventLoop: the event loop is Linux's (epoll); elsewhere every session
// is relayed by goroutines.
func (c *Conn) onEventLoop(r *Relay) (out loopOutcome, handled bool, err error) {
	return out, false, nil
}

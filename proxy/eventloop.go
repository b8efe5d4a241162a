package proxy

import "fmt"

// sides of a loop session: the socket's index in loopSession.fd.
const (
	sideClient  = 0
	sideBackend = 1
)

// loopOutcome is how a session left its event loop.
type loopOutcome struct {
	ended  bool   // both streams ended on the loop,
	reason string // for this reason (endClientClosed or endBackendClosed)
}

// loopReadError is a read that failed inside the loop.
type loopReadError struct {
	side int
	err  error
}

func (e *loopReadError) Error() string {
	if e.side == sideClient {
		return fmt.Sprintf("client -> backend: read: %v", e.err)
	}
	return fmt.Sprintf("backend -> client: read: %v", e.err)
}

func (e *loopReadError) Unwrap() error { return e.err }

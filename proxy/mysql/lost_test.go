package mysql

import (
	"bytes"
	"errors"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"

	"github.com/portcullisdb/portcullis/proxy"
)

// A session whose backend connection broke is ended with an ERR that
// names the resource (never the backend's address), numbered to follow
// the exchange in flight, not with the shutdown message.
func TestGoodbyeWhenTheBackendIsLost(t *testing.T) {
	cause := &proxy.BackendLostError{Resource: "app", Session: "0123abcd", Err: syscall.ECONNRESET}
	var last atomic.Uint32
	last.Store(3)
	var out bytes.Buffer
	if err := goodbye(&last)(&out, cause); err != nil {
		t.Fatal(err)
	}
	p := out.Bytes()
	if len(p) < 4+9 || p[3] != 4 || p[4] != 0xff {
		t.Fatalf("goodbye = % x, want an ERR packet with sequence id 4", p)
	}
	code := uint16(p[5]) | uint16(p[6])<<8
	state, message := string(p[8:13]), string(p[13:])
	if code != gomysql.ER_NET_READ_ERROR || state != stateCommLink {
		t.Errorf("ERR %d (%s), want %d (%s)", code, state, gomysql.ER_NET_READ_ERROR, stateCommLink)
	}
	if want := `the connection to resource "app" was lost (session 0123abcd)`; !strings.Contains(message, want) {
		t.Errorf("message %q does not say %q", message, want)
	}
	if !errors.Is(ended(cause), proxy.ErrBackendLost) {
		t.Error("the refusal does not carry its cause for the log")
	}
}

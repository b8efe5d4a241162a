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

// A session whose backend connection broke while a command awaited its
// answer is ended with an ERR that names the resource (never the
// backend's address), numbered to follow the exchange in flight, not with
// the shutdown message.
func TestGoodbyeWhenTheBackendIsLost(t *testing.T) {
	cause := &proxy.BackendLostError{Resource: "app", Session: "0123abcd", Err: syscall.ECONNRESET}
	var (
		last     atomic.Uint32
		awaiting atomic.Bool
	)
	// The client's command (sequence id 0) went out; no answer yet.
	toBackend := &packetFramer{last: &last, awaiting: &awaiting, client: true}
	toBackend.Relayed(pkt(0, gomysql.COM_QUERY, 's'))
	last.Store(3)
	var out bytes.Buffer
	if err := goodbye(&last, &awaiting)(&out, cause); err != nil {
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

// Lost between commands, the session gets no ERR: the client's next
// command would take it for its answer and be lost, where a close lets
// the mariadb command line connect again and run it. A shutdown still
// says why.
func TestNoGoodbyeWhenTheBackendIsLostBetweenCommands(t *testing.T) {
	var (
		last     atomic.Uint32
		awaiting atomic.Bool
	)
	toBackend := &packetFramer{last: &last, awaiting: &awaiting, client: true}
	toClient := &packetFramer{last: &last, awaiting: &awaiting}
	toBackend.Relayed(pkt(0, gomysql.COM_QUERY, 's'))
	toClient.Relayed(pkt(1, 0, 0, 0, 2, 0, 0, 0)) // its OK
	lost := &proxy.BackendLostError{Resource: "app", Session: "0123abcd", Err: syscall.ECONNRESET}
	var out bytes.Buffer
	if err := goodbye(&last, &awaiting)(&out, lost); err != nil || out.Len() != 0 {
		t.Errorf("goodbye between commands wrote % x (%v), want nothing", out.Bytes(), err)
	}
	if err := goodbye(&last, &awaiting)(&out, proxy.ErrShuttingDown); err != nil || out.Len() == 0 {
		t.Errorf("a shutdown between commands wrote nothing (%v), want its ERR", err)
	}
}

package mysql

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"

	"github.com/portcullisdb/portcullis/auth"
	"github.com/portcullisdb/portcullis/config"
)

// sha2FastAuthSuccess is caching_sha2_password's AuthMoreData code for
// "the scramble proved the password": the OK follows.
const sha2FastAuthSuccess = gomysql.CACHE_SHA2_FAST_AUTH

// canScramble reports whether a client without TLS may prove a session
// key with caching_sha2_password's fast authentication: the listener
// does not require TLS, and the client answered the greeting with that
// plugin's 32-byte scramble (an empty password sends none).
func (fe *frontend) canScramble() bool {
	return fe.plainAllowed() && fe.hs.plugin == pluginCachingSHA2 && len(fe.hs.auth) == sha256.Size
}

// plainAllowed reports whether this connection is without TLS on a
// listener that lets such clients in (with a session key's scramble).
func (fe *frontend) plainAllowed() bool {
	switch fe.c.Listener().TLS {
	case config.ListenerTLSOptional, config.ListenerTLSDisabled:
		return !fe.tls
	}
	return false
}

// switchToSHA2 asks a client that answered the greeting with another
// plugin to answer again with caching_sha2_password, over the same nonce:
// without TLS so that a session key can be proven by its scramble, over
// TLS to be asked for full authentication.
// MariaDB's client library starts on mysql_native_password when told to,
// or when its caching_sha2_password plugin (a shared object it loads on
// first use, racing when many threads connect at once) is not loaded
// yet, and then answers the greeting with an empty response.
func (fe *frontend) switchToSHA2() error {
	if err := fe.c.Step(); err != nil {
		return err
	}
	fe.switched = true
	if err := fe.pc.writePacket(authSwitch(pluginCachingSHA2, append(append([]byte(nil), fe.scramble...), 0))); err != nil {
		return err
	}
	p, err := fe.readAuthPacket()
	if err != nil {
		return err
	}
	fe.hs.plugin, fe.hs.auth = pluginCachingSHA2, p
	return nil
}

// tlsRequired is the refusal of a client without TLS: passwords travel
// only over TLS. keyRefused adds that, without TLS, a session key would
// have done, for a client whose scramble matched none.
func (fe *frontend) tlsRequired(keyRefused bool) *refusal {
	tlsOff := fe.offered&gomysql.CLIENT_SSL == 0
	var msg string
	switch {
	case tlsOff && keyRefused:
		msg = "portcullis accepts passwords only over TLS, and this listener has TLS turned off: here only a valid session key is accepted as the password; ask an operator to turn TLS on"
	case tlsOff:
		msg = "portcullis accepts passwords only over TLS, and this listener has TLS turned off; ask an operator to turn it on"
	case keyRefused:
		msg = "portcullis accepts passwords only over TLS: connect with --ssl (ssl-mode=REQUIRED, or tls=true in a connection string); without TLS, only a valid session key is accepted as the password"
	default:
		msg = "portcullis accepts passwords only over TLS: connect with --ssl (ssl-mode=REQUIRED, or tls=true in a connection string)"
	}
	return &refusal{code: gomysql.ER_ACCESS_DENIED_ERROR, state: stateAccessDenied, message: msg}
}

// decideByScramble decides on a client without TLS by the scramble in
// its handshake response: only a session key of the login can match it,
// and no sign-in is ever started. On a yes the client is told the
// scramble was good (fast_auth_success); what follows is as for any
// login. A resource with require_totp is refused: a scramble carries no
// code.
func (fe *frontend) decideByScramble(ctx context.Context, res config.Resource) (*auth.Decision, error) {
	if res.RequireTOTP {
		msg := fmt.Sprintf("%q requires a TOTP code, which portcullis takes only over TLS: connect with --ssl (ssl-mode=REQUIRED, or tls=true in a connection string)", res.Name)
		if fe.offered&gomysql.CLIENT_SSL == 0 {
			msg = fmt.Sprintf("%q requires a TOTP code, which portcullis takes only over TLS, and this listener has TLS turned off; connect through a listener with TLS", res.Name)
		}
		return nil, &refusal{code: gomysql.ER_ACCESS_DENIED_ERROR, state: stateAccessDenied, message: msg, reason: "totp_requires_tls"}
	}
	fe.passwordAt = time.Now()
	req := auth.Request{
		Protocol:    config.ProtocolMySQL,
		Resource:    res.Name,
		LoginName:   fe.hs.user,
		Scramble:    &auth.SHA2Scramble{Nonce: fe.scramble, Response: fe.hs.auth},
		ClientAddr:  fe.c.ClientAddr().Addr(),
		Application: fe.application(),
		ReceivedAt:  fe.passwordAt,
		// No Prompt: a scramble never starts a sign-in.
		Mode: auth.PromptError,
	}
	dctx, cancel := context.WithTimeoutCause(ctx, fe.c.Limits().HandshakeTimeout, errDecisionTimeout)
	defer cancel()
	dec, err := fe.c.Decide(dctx, req)
	if err != nil && ctx.Err() == nil && dctx.Err() != nil {
		return nil, fmt.Errorf("decision for %s: %w", req.LoginName, context.Cause(dctx))
	}
	var denied *auth.Refusal
	if errors.As(err, &denied) && denied.Reason == auth.ReasonBadCredentials {
		r := fe.tlsRequired(true)
		r.err = err
		return nil, r
	}
	if err != nil {
		return nil, err
	}
	if err := fe.c.Step(); err != nil {
		return nil, err
	}
	if err := fe.pc.writePacket([]byte{authMoreDataHeader, sha2FastAuthSuccess}); err != nil {
		return nil, err
	}
	return dec, nil
}

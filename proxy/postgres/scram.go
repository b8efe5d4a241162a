package postgres

import (
	"bytes"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"slices"
	"strconv"
	"sync"
)

// SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, from the
// client's side, for portcullis's own logins to backends.
//
// The costly step of a SCRAM login is the client's: deriving the salted
// password takes as many HMAC rounds as the server's verifier says (4096
// by default), about a millisecond of CPU. The server's side is a few
// HMACs. portcullis logs in with the same mapped credentials again and
// again, and the salted password depends only on the password, the salt
// and the round count (which change together whenever the role's password
// is set), so the keys derived from it are kept in memory and a repeated
// login costs what the server's side does. This is what PgBouncer does for
// the same reason. The keys are worth no more than the password that is
// already in memory: they open only the server that holds its verifier.

const (
	scramSHA256     = "SCRAM-SHA-256"
	scramSHA256Plus = "SCRAM-SHA-256-PLUS"
)

// scramKeys are ClientKey and ServerKey, derived from the salted password.
type scramKeys struct{ client, server [sha256.Size]byte }

// scramKeyCacheSize bounds the cache: one entry per (password, salt,
// rounds), so per mapped login of each backend server.
const scramKeyCacheSize = 4096

// scramKeyCache holds derived keys by a digest of what they derive from,
// so the cache holds no password.
type scramKeyCache struct {
	mu   sync.Mutex
	keys map[[sha256.Size]byte]scramKeys
}

var derivedKeys = &scramKeyCache{keys: map[[sha256.Size]byte]scramKeys{}}

// get returns the keys for password, salt and rounds, deriving them the
// first time.
func (c *scramKeyCache) get(password string, salt []byte, rounds int) (scramKeys, error) {
	h := sha256.New()
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(password)))
	h.Write(n[:])
	h.Write([]byte(password))
	binary.BigEndian.PutUint64(n[:], uint64(rounds))
	h.Write(n[:])
	h.Write(salt)
	var id [sha256.Size]byte
	h.Sum(id[:0])

	c.mu.Lock()
	k, ok := c.keys[id]
	c.mu.Unlock()
	if ok {
		return k, nil
	}
	salted, err := pbkdf2.Key(sha256.New, password, salt, rounds, sha256.Size)
	if err != nil {
		return scramKeys{}, fmt.Errorf("SCRAM: deriving the salted password: %w", err)
	}
	copy(k.client[:], hmacSHA256(salted, []byte("Client Key")))
	copy(k.server[:], hmacSHA256(salted, []byte("Server Key")))
	clear(salted)

	c.mu.Lock()
	if len(c.keys) >= scramKeyCacheSize {
		for old := range c.keys { // an arbitrary one
			delete(c.keys, old)
			break
		}
	}
	c.keys[id] = k
	c.mu.Unlock()
	return k, nil
}

func hmacSHA256(key, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)
}

// scramClient is one SCRAM exchange.
type scramClient struct {
	mechanism string
	gs2Header string // "n,,", "y,," or "p=tls-server-end-point,,"
	binding   []byte // the server certificate's hash, for -PLUS
	password  string
	nonce     string
	firstBare string
	authMsg   []byte
	serverKey [sha256.Size]byte
	keys      *scramKeyCache
}

// newSCRAM picks the mechanism from what the server offers. Over TLS it
// binds the exchange to the server's certificate (SCRAM-SHA-256-PLUS,
// tls-server-end-point) where the server offers that; a server that does
// not is told the client could have (gs2 "y"), so a server that did offer
// it and was downgraded on the way refuses.
func newSCRAM(offered []string, password string, tc *tls.Conn) (*scramClient, error) {
	sc := &scramClient{password: password, keys: derivedKeys}
	switch {
	case tc != nil && slices.Contains(offered, scramSHA256Plus):
		hash, err := certificateHash(tc)
		if err != nil {
			return nil, fmt.Errorf("SCRAM channel binding: %w", err)
		}
		sc.mechanism, sc.gs2Header, sc.binding = scramSHA256Plus, "p=tls-server-end-point,,", hash
	case slices.Contains(offered, scramSHA256):
		sc.mechanism, sc.gs2Header = scramSHA256, "n,,"
		if tc != nil {
			sc.gs2Header = "y,,"
		}
	default:
		return nil, fmt.Errorf("the server offers SASL mechanisms %q, none of which portcullis speaks", offered)
	}
	var raw [18]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, fmt.Errorf("SCRAM nonce: %w", err)
	}
	sc.nonce = base64.StdEncoding.EncodeToString(raw[:])
	// PostgreSQL takes the user from the startup message and ignores
	// SCRAM's.
	sc.firstBare = "n=,r=" + sc.nonce
	return sc, nil
}

// clientFirst is the client-first-message.
func (sc *scramClient) clientFirst() []byte {
	return []byte(sc.gs2Header + sc.firstBare)
}

// clientFinal answers the server-first-message with the
// client-final-message.
func (sc *scramClient) clientFinal(serverFirst []byte) ([]byte, error) {
	var nonce, salt64, rounds string
	for attr := range bytes.SplitSeq(serverFirst, []byte(",")) {
		if len(attr) < 2 || attr[1] != '=' {
			continue
		}
		switch attr[0] {
		case 'r':
			nonce = string(attr[2:])
		case 's':
			salt64 = string(attr[2:])
		case 'i':
			rounds = string(attr[2:])
		}
	}
	if len(nonce) <= len(sc.nonce) || nonce[:len(sc.nonce)] != sc.nonce {
		return nil, errors.New("SCRAM: the server's nonce does not extend the client's")
	}
	salt, err := base64.StdEncoding.DecodeString(salt64)
	if err != nil || len(salt) == 0 {
		return nil, errors.New("SCRAM: the server sent no valid salt")
	}
	n, err := strconv.Atoi(rounds)
	if err != nil || n < 1 {
		return nil, fmt.Errorf("SCRAM: the server sent an invalid iteration count %q", rounds)
	}
	keys, err := sc.keys.get(sc.password, salt, n)
	if err != nil {
		return nil, err
	}
	sc.serverKey = keys.server

	channel := base64.StdEncoding.EncodeToString(append([]byte(sc.gs2Header), sc.binding...))
	withoutProof := "c=" + channel + ",r=" + nonce
	sc.authMsg = slices.Concat([]byte(sc.firstBare), []byte(","), serverFirst, []byte(","), []byte(withoutProof))

	stored := sha256.Sum256(keys.client[:])
	proof := hmacSHA256(stored[:], sc.authMsg)
	subtle.XORBytes(proof, proof, keys.client[:])
	return []byte(withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof)), nil
}

// verifyFinal checks the server-final-message: the server proves it
// holds the verifier, so a server that merely accepts anything is caught.
func (sc *scramClient) verifyFinal(serverFinal []byte) error {
	if e, ok := bytes.CutPrefix(serverFinal, []byte("e=")); ok {
		return fmt.Errorf("SCRAM: the server reports %q", e)
	}
	v, ok := bytes.CutPrefix(serverFinal, []byte("v="))
	if !ok {
		return errors.New("SCRAM: the server-final-message has no verifier")
	}
	got, err := base64.StdEncoding.DecodeString(string(v))
	if err != nil {
		return errors.New("SCRAM: the server's signature is not base64")
	}
	if !hmac.Equal(got, hmacSHA256(sc.serverKey[:], sc.authMsg)) {
		return errors.New("SCRAM: the server's signature does not match: it does not know the password")
	}
	return nil
}

// certificateHash is the tls-server-end-point channel binding (RFC 5929):
// the server certificate hashed with its signature's hash, SHA-256 where
// that is MD5 or SHA-1.
func certificateHash(tc *tls.Conn) ([]byte, error) {
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return nil, errors.New("the server presented no certificate")
	}
	cert := certs[0]
	var h hash.Hash
	switch cert.SignatureAlgorithm {
	case x509.MD5WithRSA, x509.SHA1WithRSA, x509.ECDSAWithSHA1, x509.DSAWithSHA1,
		x509.SHA256WithRSA, x509.SHA256WithRSAPSS, x509.ECDSAWithSHA256, x509.DSAWithSHA256:
		h = sha256.New()
	case x509.SHA384WithRSA, x509.SHA384WithRSAPSS, x509.ECDSAWithSHA384:
		h = sha512.New384()
	case x509.SHA512WithRSA, x509.SHA512WithRSAPSS, x509.ECDSAWithSHA512:
		h = sha512.New()
	default:
		return nil, fmt.Errorf("no hash for the server certificate's signature algorithm %v", cert.SignatureAlgorithm)
	}
	h.Write(cert.Raw)
	return h.Sum(nil), nil
}

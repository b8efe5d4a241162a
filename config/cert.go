package config

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/des"
	"crypto/pbkdf2"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"hash"
	"time"

	"software.sslmate.com/src/go-pkcs12"
)

// ClientCertificate is a provider's client certificate with its private
// key, ready for a confidential client (MSAL's confidential.NewCredFromCert
// takes Chain and Key as they are).
type ClientCertificate struct {
	// Chain is the leaf certificate first, then any intermediates.
	Chain []*x509.Certificate
	// Key is the leaf's RSA private key: Entra ID signs client assertions
	// with RSA only.
	Key *rsa.PrivateKey
}

// String describes the certificate without its key, so a Config can be
// printed safely.
func (c ClientCertificate) String() string {
	if len(c.Chain) == 0 {
		return "[certificate]"
	}
	leaf := c.Chain[0]
	return fmt.Sprintf("[certificate %q, expires %s, key redacted]", leaf.Subject.String(), leaf.NotAfter.UTC().Format(time.DateOnly))
}

// GoString keeps %#v from printing the key.
func (c ClientCertificate) GoString() string { return c.String() }

// MarshalText keeps JSON and YAML output from printing the key.
func (c ClientCertificate) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// LoadClientCertificate reads a PEM file (one or more CERTIFICATE blocks
// and a PRIVATE KEY, RSA PRIVATE KEY or ENCRYPTED PRIVATE KEY block) or,
// failing PEM, a PKCS#12 (PFX) file. password unlocks a PFX or an
// encrypted PKCS#8 key and is ignored otherwise. The key must be RSA and
// must match a certificate, which becomes the leaf; an expired leaf is an
// error. Errors never contain the password or key material.
func LoadClientCertificate(path, password string) (*ClientCertificate, error) {
	data, err := readLimited(path, maxPEMFile)
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	var key any
	if bytes.Contains(data, []byte("-----BEGIN")) {
		certs, key, err = parsePEMBundle(data, password)
	} else {
		var leaf *x509.Certificate
		var cas []*x509.Certificate
		key, leaf, cas, err = pkcs12.DecodeChain(data, password)
		if err == nil {
			certs = append([]*x509.Certificate{leaf}, cas...)
		} else if errors.Is(err, pkcs12.ErrIncorrectPassword) {
			err = errors.New("the PFX password is wrong (client_certificate_password_env)")
		} else {
			err = fmt.Errorf("not a PEM or PFX certificate: %w", err)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", path, err)
	}
	cc, err := assemble(certs, key)
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", path, err)
	}
	if now := time.Now(); now.After(cc.Chain[0].NotAfter) {
		return nil, fmt.Errorf("certificate %s expired on %s", path, cc.Chain[0].NotAfter.UTC().Format(time.RFC3339))
	}
	return cc, nil
}

// assemble checks the key and puts the certificate it belongs to first.
func assemble(certs []*x509.Certificate, key any) (*ClientCertificate, error) {
	if len(certs) == 0 {
		return nil, errors.New("no certificate found")
	}
	if key == nil {
		return nil, errors.New("no private key found (the file must hold the key as well as the certificate)")
	}
	rk, ok := key.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("the private key is %T; Entra ID client certificates must use RSA keys", key)
	}
	for i, c := range certs {
		if pub, ok := c.PublicKey.(*rsa.PublicKey); ok && pub.Equal(&rk.PublicKey) {
			chain := []*x509.Certificate{c}
			chain = append(chain, certs[:i]...)
			chain = append(chain, certs[i+1:]...)
			return &ClientCertificate{Chain: chain, Key: rk}, nil
		}
	}
	return nil, errors.New("the private key matches none of the certificates")
}

// parsePEMBundle collects the certificates and the one private key of a
// PEM file.
func parsePEMBundle(data []byte, password string) ([]*x509.Certificate, any, error) {
	var certs []*x509.Certificate
	var key any
	for n := 1; ; n++ {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		switch b.Type {
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, nil, fmt.Errorf("PEM block %d: %w", n, err)
			}
			certs = append(certs, c)
			continue
		case "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY":
		default:
			continue // parameters, CSRs and the like are not ours to judge
		}
		if key != nil {
			return nil, nil, errors.New("more than one private key")
		}
		var err error
		switch {
		case b.Headers["Proc-Type"] != "":
			err = errors.New("legacy encrypted PEM keys are not supported; convert with `openssl pkcs8 -topk8` or use a PFX")
		case b.Type == "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case b.Type == "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		case b.Type == "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(b.Bytes)
		case b.Type == "ENCRYPTED PRIVATE KEY":
			if password == "" {
				return nil, nil, errors.New("the private key is encrypted; set client_certificate_password_env")
			}
			key, err = decryptPKCS8(b.Bytes, password)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("private key (PEM block %d): %w", n, err)
		}
	}
	return certs, key, nil
}

// Object identifiers of PKCS#5 v2 (RFC 8018), which is what
// `openssl pkcs8 -topk8` writes.
var (
	oidPBES2      = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 13}
	oidPBKDF2     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 12}
	oidHMACSHA1   = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 7}
	oidHMACSHA256 = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 9}
	oidHMACSHA384 = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 10}
	oidHMACSHA512 = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 11}
	oidAES128CBC  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 2}
	oidAES192CBC  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 22}
	oidAES256CBC  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 42}
	oidDESEDE3CBC = asn1.ObjectIdentifier{1, 2, 840, 113549, 3, 7}
)

type encryptedPrivateKeyInfo struct {
	Algorithm pkix.AlgorithmIdentifier
	Data      []byte
}

type pbes2Params struct {
	KDF        pkix.AlgorithmIdentifier
	Encryption pkix.AlgorithmIdentifier
}

type pbkdf2Params struct {
	Salt       []byte
	Iterations int
	KeyLength  int                      `asn1:"optional"`
	PRF        pkix.AlgorithmIdentifier `asn1:"optional"`
}

// decryptPKCS8 opens an ENCRYPTED PRIVATE KEY block protected with PBES2
// (PBKDF2 and AES-CBC or 3DES-CBC).
func decryptPKCS8(der []byte, password string) (any, error) {
	var info encryptedPrivateKeyInfo
	if rest, err := asn1.Unmarshal(der, &info); err != nil || len(rest) > 0 {
		return nil, errors.New("malformed encrypted private key")
	}
	if !info.Algorithm.Algorithm.Equal(oidPBES2) {
		return nil, fmt.Errorf("encryption %s is not supported; use PBES2 (openssl pkcs8 -topk8 -v2 aes-256-cbc)", info.Algorithm.Algorithm)
	}
	var params pbes2Params
	if _, err := asn1.Unmarshal(info.Algorithm.Parameters.FullBytes, &params); err != nil {
		return nil, errors.New("malformed PBES2 parameters")
	}
	if !params.KDF.Algorithm.Equal(oidPBKDF2) {
		return nil, fmt.Errorf("key derivation %s is not supported; use PBKDF2", params.KDF.Algorithm)
	}
	var kdf pbkdf2Params
	if _, err := asn1.Unmarshal(params.KDF.Parameters.FullBytes, &kdf); err != nil {
		return nil, errors.New("malformed PBKDF2 parameters")
	}
	var prf func() hash.Hash
	switch alg := kdf.PRF.Algorithm; {
	case len(alg) == 0, alg.Equal(oidHMACSHA1):
		prf = sha1.New
	case alg.Equal(oidHMACSHA256):
		prf = sha256.New
	case alg.Equal(oidHMACSHA384):
		prf = sha512.New384
	case alg.Equal(oidHMACSHA512):
		prf = sha512.New
	default:
		return nil, fmt.Errorf("PBKDF2 hash %s is not supported", alg)
	}
	var keyLen int
	var newCipher func([]byte) (cipher.Block, error)
	switch alg := params.Encryption.Algorithm; {
	case alg.Equal(oidAES128CBC):
		keyLen, newCipher = 16, aes.NewCipher
	case alg.Equal(oidAES192CBC):
		keyLen, newCipher = 24, aes.NewCipher
	case alg.Equal(oidAES256CBC):
		keyLen, newCipher = 32, aes.NewCipher
	case alg.Equal(oidDESEDE3CBC):
		keyLen, newCipher = 24, des.NewTripleDESCipher
	default:
		return nil, fmt.Errorf("cipher %s is not supported; use aes-256-cbc", alg)
	}
	if kdf.Iterations <= 0 || kdf.Iterations > 10_000_000 {
		return nil, errors.New("PBKDF2 iteration count out of range")
	}
	var iv []byte
	if _, err := asn1.Unmarshal(params.Encryption.Parameters.FullBytes, &iv); err != nil {
		return nil, errors.New("malformed cipher parameters")
	}
	k, err := pbkdf2.Key(prf, password, kdf.Salt, kdf.Iterations, keyLen)
	if err != nil {
		return nil, fmt.Errorf("deriving the key: %w", err)
	}
	block, err := newCipher(k)
	if err != nil {
		return nil, err
	}
	bs := block.BlockSize()
	if len(iv) != bs || len(info.Data) == 0 || len(info.Data)%bs != 0 {
		return nil, errors.New("malformed encrypted private key")
	}
	plain := make([]byte, len(info.Data))
	cipher.NewCBCDecrypter(block, iv).CryptBlocks(plain, info.Data)
	// A wrong password shows up as bad padding or as garbage DER; say the
	// same thing in both cases.
	wrong := errors.New("cannot decrypt the private key: wrong password (client_certificate_password_env)?")
	pad := int(plain[len(plain)-1])
	if pad == 0 || pad > bs {
		return nil, wrong
	}
	for _, b := range plain[len(plain)-pad:] {
		if int(b) != pad {
			return nil, wrong
		}
	}
	key, err := x509.ParsePKCS8PrivateKey(plain[:len(plain)-pad])
	if err != nil {
		return nil, wrong
	}
	return key, nil
}

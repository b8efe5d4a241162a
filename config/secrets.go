package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
)

// maxSecretFile bounds what a *_file key may make Load read.
const maxSecretFile = 1 << 20

// secretRef is one *_env / *_file pair and the Secret it fills.
type secretRef struct {
	key     string // key path without the suffix, e.g. providers[0].client_secret
	envName string
	file    string
	dst     *Secret
}

// resolveSecrets reads every referenced secret into its Secret field.
// Problems name the key and the variable or file, never the value.
func (c *Config) resolveSecrets(ps *problems, env map[string]string) {
	var refs []secretRef
	for i := range c.Providers {
		p := &c.Providers[i]
		refs = append(refs, secretRef{fmt.Sprintf("providers[%d].client_secret", i), p.ClientSecretEnv, p.ClientSecretFile, &p.ClientSecret})
	}
	for i := range c.Resources {
		for j := range c.Resources[i].Credentials {
			m := &c.Resources[i].Credentials[j]
			refs = append(refs, secretRef{fmt.Sprintf("resources[%d].credentials[%d].password", i, j), m.PasswordEnv, m.PasswordFile, &m.Password})
		}
	}
	refs = append(refs,
		secretRef{"store.dsn", c.Store.DSNEnv, c.Store.DSNFile, &c.Store.DSN},
		secretRef{"store.key", c.Store.KeyEnv, c.Store.KeyFile, &c.Store.Key},
		secretRef{"store.previous_key", c.Store.PreviousKeyEnv, c.Store.PreviousKeyFile, &c.Store.PreviousKey},
	)
	for _, r := range refs {
		switch {
		case r.envName != "" && r.file != "":
			ps.add(r.key+"_file", "%s_env and %s_file are both set; keep one", lastSegment(r.key), lastSegment(r.key))
		case r.envName != "":
			v, err := lookupEnv(env, r.envName)
			if err != nil {
				ps.add(r.key+"_env", "%s", err.Error())
				continue
			}
			*r.dst = NewSecret(v)
		case r.file != "":
			v, err := readSecretFile(r.file)
			if err != nil {
				ps.add(r.key+"_file", "%s", err.Error())
				continue
			}
			*r.dst = NewSecret(v)
		}
	}

	for i := range c.Providers {
		p := &c.Providers[i]
		if p.ClientCertificateFile == "" {
			continue
		}
		password := ""
		if p.ClientCertificatePasswordEnv != "" {
			v, err := lookupEnv(env, p.ClientCertificatePasswordEnv)
			if err != nil {
				ps.add(fmt.Sprintf("providers[%d].client_certificate_password_env", i), "%s", err.Error())
				continue
			}
			password = v
		}
		cc, err := LoadClientCertificate(p.ClientCertificateFile, password)
		if err != nil {
			ps.add(fmt.Sprintf("providers[%d].client_certificate_file", i), "%s", err.Error())
			continue
		}
		p.ClientCertificate = cc
	}
}

// lookupEnv returns a variable's value; unset and empty are both errors,
// since an empty secret is never what was meant.
func lookupEnv(env map[string]string, name string) (string, error) {
	v, ok := env[name]
	switch {
	case !ok:
		return "", fmt.Errorf("environment variable %s is not set", name)
	case v == "":
		return "", fmt.Errorf("environment variable %s is empty", name)
	}
	return v, nil
}

// readSecretFile reads a secret from a file, dropping one trailing newline
// (what editors and `echo` leave behind) and nothing else.
func readSecretFile(path string) (string, error) {
	data, err := readLimited(path, maxSecretFile)
	if err != nil {
		return "", err
	}
	s := string(data)
	if strings.HasSuffix(s, "\r\n") {
		s = s[:len(s)-2]
	} else {
		s = strings.TrimSuffix(s, "\n")
	}
	if s == "" {
		return "", fmt.Errorf("file %s is empty", path)
	}
	return s, nil
}

// fileError says why a file could not be read in a sentence that names the
// file once.
func fileError(path string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("file %s does not exist%w", path, quiet{fs.ErrNotExist})
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("file %s cannot be read: permission denied%w", path, quiet{fs.ErrPermission})
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return fmt.Errorf("file %s cannot be read: %w", path, err)
}

// quiet wraps an error for errors.Is without adding to the message.
type quiet struct{ err error }

func (q quiet) Error() string { return "" }
func (q quiet) Unwrap() error { return q.err }

func lastSegment(key string) string {
	if i := strings.LastIndexByte(key, '.'); i >= 0 {
		return key[i+1:]
	}
	return key
}

// Upper bounds on files the configuration names, so that a path such as
// /dev/zero is a clear error rather than exhausted memory.
const (
	maxConfigFile = 4 << 20
	maxPEMFile    = 1 << 20
)

// readLimited reads a whole file of at most limit bytes.
func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fileError(path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fileError(path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("file %s is larger than %d bytes; is it the right file?", path, limit)
	}
	return data, nil
}

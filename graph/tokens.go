package graph

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/confidential"
)

// AppTokenOptions configure NewAppTokens.
type AppTokenOptions struct {
	// Authority is the tenant's authority URL, e.g.
	// https://login.microsoftonline.com/<tenant id>.
	Authority string
	// ClientID is the app registration that holds the Graph application
	// permissions (GroupMember.Read.All, User.Read.All, ...).
	ClientID string
	// Credential is its secret or certificate
	// (confidential.NewCredFromSecret, confidential.NewCredFromCert).
	Credential confidential.Credential
	// Scope defaults to Endpoint + "/.default".
	Scope string
	// Endpoint is the Graph root the token is for; default
	// DefaultEndpoint. Only used to derive Scope.
	Endpoint string
	// HTTPClient talks to the authority; default MSAL's.
	HTTPClient *http.Client
	// DisableInstanceDiscovery turns off MSAL's authority validation
	// against the public cloud's instance-discovery service. Leave it off
	// for real tenants; development and tests against the simulator, which
	// the public cloud does not know, set it.
	DisableInstanceDiscovery bool
}

// appTokens is an app-only TokenSource backed by MSAL's confidential
// client, which caches tokens and renews them before they expire.
type appTokens struct {
	client confidential.Client
	scopes []string
}

// NewAppTokens returns a TokenSource of app-only Graph tokens obtained
// with the client-credentials grant through MSAL.
func NewAppTokens(o AppTokenOptions) (TokenSource, error) {
	if o.Authority == "" || o.ClientID == "" {
		return nil, errors.New("graph: app tokens: authority and client id are required")
	}
	if o.Scope == "" {
		ep := o.Endpoint
		if ep == "" {
			ep = DefaultEndpoint
		}
		o.Scope = strings.TrimRight(ep, "/") + "/.default"
	}
	var opts []confidential.Option
	if o.HTTPClient != nil {
		opts = append(opts, confidential.WithHTTPClient(o.HTTPClient))
	}
	if o.DisableInstanceDiscovery {
		opts = append(opts, confidential.WithInstanceDiscovery(false))
	}
	client, err := confidential.New(o.Authority, o.ClientID, o.Credential, opts...)
	if err != nil {
		return nil, fmt.Errorf("graph: app tokens for client %s: %w", o.ClientID, err)
	}
	return &appTokens{client: client, scopes: []string{o.Scope}}, nil
}

// Token returns a cached app token or acquires a new one.
func (a *appTokens) Token(ctx context.Context) (string, error) {
	res, err := a.client.AcquireTokenByCredential(ctx, a.scopes)
	if err != nil {
		return "", fmt.Errorf("acquire app-only token for %s: %w", a.scopes[0], err)
	}
	return res.AccessToken, nil
}

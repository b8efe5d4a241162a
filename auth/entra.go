package auth

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/public"
)

// OSSRDBMSAudience is the audience of Entra tokens that Azure Database
// for PostgreSQL and for MySQL accept as passwords ("OSS RDBMS"). A
// provider may list it among its audiences so that tools set up for Azure
// Database work through portcullis unchanged.
const OSSRDBMSAudience = "https://ossrdbms-aad.database.windows.net"

// ossrdbmsScope asks Entra for a token for Azure Database.
const ossrdbmsScope = OSSRDBMSAudience + "/.default"

// rdbmsTokenMargin is how long before its expiry a remembered token for
// Azure Database stops being handed out: the backend login must not race
// the token's end.
const rdbmsTokenMargin = 5 * time.Minute

// entraSource is what a decision has that can become a token for Azure
// Database in the identity's own name.
type entraSource struct {
	method Method
	id     Identity
	// presented is the access token the client gave (MethodAccessToken).
	presented string
	// presentedAud are its audiences.
	presentedAud []string
	// homeAccount is the MSAL account of an interactive sign-in held in
	// this process (device code, session key, address grace).
	homeAccount string
	// secret is a service principal's client secret (MethodServicePrincipal).
	secret string
}

// entraBackend is the backend login of an entra mapping: the identity's
// own name (a person's UPN; a program's display name, which Azure
// Database uses as the role of a service principal) and a token for Azure
// Database, obtained without asking anyone anything: the token the client
// presented when it is already for Azure Database, a token from the
// person's sign-in (MSAL's refresh token, kept in this process), or a
// client-credentials grant with the program's secret.
func (a *Authorizer) entraBackend(ctx context.Context, p *provider, res *resource, src entraSource) (BackendCredentials, error) {
	who := src.id.Name()
	user := src.id.UPN
	if src.id.Kind == KindServicePrincipal {
		user = src.id.DisplayName
		if user == "" {
			// App-only tokens need not carry the display name; the
			// directory has it.
			if r, ok := p.groups.(IdentityResolver); ok {
				sp, _, err := r.ResolveIdentity(ctx, KindServicePrincipal, src.id.AppID)
				if err != nil {
					return BackendCredentials{}, directoryRefusal(src.id, "look up the name of", err)
				}
				user = sp.DisplayName
			}
		}
	}
	if user == "" {
		return BackendCredentials{}, &Refusal{
			Reason:  ReasonNotAllowed,
			Message: fmt.Sprintf("%q logs in to Azure Database as the signed-in identity, and Entra ID did not say the name of %s", res.cfg.Name, who),
		}
	}
	var (
		token string
		err   error
	)
	switch src.method {
	case MethodAccessToken:
		token, err = presentedRDBMSToken(res, src, who)
	case MethodDeviceCode, MethodSessionKey, MethodAddressGrace:
		token, err = a.silentRDBMSToken(ctx, p, res, src, who)
	case MethodServicePrincipal:
		token, err = a.servicePrincipalRDBMSToken(ctx, p, src, who)
	default:
		err = &Refusal{
			Reason: ReasonNotAllowed,
			Message: fmt.Sprintf("%q logs in to Azure Database as the signed-in identity, which needs an Entra sign-in, a token or a client secret; an access key cannot give one",
				res.cfg.Name),
		}
	}
	if err != nil {
		return BackendCredentials{}, err
	}
	return BackendCredentials{User: user, AccessToken: token}, nil
}

// presentedRDBMSToken passes on the token the client presented, when it
// is already for Azure Database. It has been validated like any token
// presented as a password.
func presentedRDBMSToken(res *resource, src entraSource, who string) (string, error) {
	for _, aud := range src.presentedAud {
		if strings.EqualFold(strings.TrimSuffix(aud, "/"), OSSRDBMSAudience) {
			return src.presented, nil
		}
	}
	return "", &Refusal{
		Reason: ReasonNotAllowed,
		Message: fmt.Sprintf("%q logs in to Azure Database as %s, which needs an access token for %s; present one (az account get-access-token --resource-type oss-rdbms)",
			res.cfg.Name, who, OSSRDBMSAudience),
	}
}

// silentRDBMSToken gets a token for Azure Database from a person's
// sign-in without asking them: MSAL redeems the refresh token it holds
// for the account.
func (a *Authorizer) silentRDBMSToken(ctx context.Context, p *provider, res *resource, src entraSource, who string) (string, error) {
	again := &Refusal{
		Reason: ReasonBadCredentials,
		Message: fmt.Sprintf("%q logs in to Azure Database as %s, and portcullis no longer holds that sign-in (it may have restarted, or the sign-in was made on another replica); connect with any other password to sign in again",
			res.cfg.Name, who),
	}
	if src.homeAccount == "" {
		again.Err = errors.New("no MSAL account recorded for the sign-in")
		return "", again
	}
	accounts, err := p.pca.Accounts(ctx)
	if err != nil {
		again.Err = fmt.Errorf("list accounts: %w", err)
		return "", again
	}
	for _, acct := range accounts {
		if acct.HomeAccountID != src.homeAccount {
			continue
		}
		r, err := p.pca.AcquireTokenSilent(ctx, []string{ossrdbmsScope}, public.WithSilentAccount(acct))
		if err != nil {
			if _, status := oauthErrorCode(err); status == 400 || status == 401 {
				// The refresh token was revoked, the account disabled, or
				// consent withdrawn: Entra says no.
				again.Err = oauthError(err)
				again.Message = fmt.Sprintf("Microsoft Entra ID no longer gives portcullis a token for Azure Database in the name of %s; connect with any other password to sign in again", who)
				return "", again
			}
			return "", &Refusal{
				Reason:  ReasonUnavailable,
				Message: fmt.Sprintf("Microsoft Entra ID could not be reached for a token for Azure Database in the name of %s; try again later", who),
				Err:     oauthError(err),
			}
		}
		return r.AccessToken, nil
	}
	again.Err = errors.New("the MSAL account is no longer in memory")
	return "", again
}

// servicePrincipalRDBMSToken gets a token for Azure Database with the
// program's own secret, remembered like the proof of the secret, so a
// pool of connections costs one grant.
func (a *Authorizer) servicePrincipalRDBMSToken(ctx context.Context, p *provider, src entraSource, who string) (string, error) {
	k := a.spCache.key(p.name, src.id.AppID, src.secret, "rdbms")
	e, err := a.spCache.do(ctx, k, a.now, func() (spEntry, error) {
		r, err := a.clientCredentials(ctx, p, src.id.AppID, src.secret, ossrdbmsScope)
		if err != nil {
			var ref *Refusal
			if errors.As(err, &ref) {
				return spEntry{}, ref
			}
			return spEntry{}, entraRefusal(err, ReasonNotAllowed, fmt.Sprintf("a token for Azure Database in the name of %s", who))
		}
		e := spEntry{identity: src.id, token: r.AccessToken}
		if !r.ExpiresOn.IsZero() {
			e.expires = r.ExpiresOn.Add(-rdbmsTokenMargin)
		}
		return e, nil
	})
	return e.token, err
}

// keepsAccounts reports whether sign-ins with provider p must keep their
// MSAL account (and its refresh token) in memory after the sign-in: in
// delegated Graph mode for the person's Graph token, and when some
// resource logs in to Azure Database in the person's name.
func (a *Authorizer) keepsAccounts(p *provider) bool {
	if p.delegated {
		return true
	}
	pol := a.policy.Load()
	if pol == nil {
		return false
	}
	for _, r := range pol.resources {
		if r.provider != p {
			continue
		}
		for _, m := range r.mappings {
			if m.cfg.Entra {
				return true
			}
		}
	}
	return false
}

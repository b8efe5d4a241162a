package auth

import "strings"

// pendingFlows counts device-code flows the Authorizer still tracks.
func (a *Authorizer) pendingFlows() int {
	a.flowMu.Lock()
	defer a.flowMu.Unlock()
	return len(a.flows)
}

// flowKeyFor is the key a request's device-code flow is filed under.
func (a *Authorizer) flowKeyFor(provider string, req Request) flowKey {
	return flowKey{provider: provider, login: strings.ToLower(req.LoginName), addr: req.ClientAddr}
}

// flowDone reports whether the flow under key has an outcome.
func (a *Authorizer) flowDone(key flowKey) bool {
	a.flowMu.Lock()
	f := a.flows[key]
	a.flowMu.Unlock()
	return f != nil && f.isDone()
}

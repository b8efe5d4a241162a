package proxy

import (
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/portcullisdb/portcullis/auth"
)

// Bounds of the record of recent identities: it answers "who has been
// here lately and in which groups", not "everyone ever".
const (
	maxRecentIdentities = 256
	maxRecentGroups     = 100
)

// IdentitySeen is one identity that portcullis let in recently, for the
// admin console's SHOW USERS.
type IdentitySeen struct {
	Identity auth.Identity
	// LoginName, Resource, Method and ClientAddr are those of the latest
	// connection allowed in.
	LoginName  string
	Resource   string
	Method     auth.Method
	ClientAddr netip.Addr
	// Groups are the display names (or ids) of the identity's transitive
	// groups at that connection, at most 100 of GroupCount.
	Groups     []string
	GroupCount int
	// FirstSeen and LastSeen bound the connections counted in
	// Connections since the identity entered the record.
	FirstSeen   time.Time
	LastSeen    time.Time
	Connections int
}

// recentIdentities keeps the latest maxRecentIdentities identities
// allowed in; the one seen longest ago makes room.
type recentIdentities struct {
	mu  sync.Mutex
	ids map[string]*IdentitySeen
}

func newRecentIdentities() *recentIdentities {
	return &recentIdentities{ids: map[string]*IdentitySeen{}}
}

func (r *recentIdentities) record(req auth.Request, d *auth.Decision, now time.Time) {
	key := d.Identity.Provider + "/" + string(d.Identity.Kind) + "/" + d.Identity.ObjectID
	groups := groupNames(d.Groups)
	count := len(groups)
	if count > maxRecentGroups {
		groups = groups[:maxRecentGroups]
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.ids[key]
	if !ok {
		if len(r.ids) >= maxRecentIdentities {
			r.evictOldest()
		}
		e = &IdentitySeen{FirstSeen: now}
		r.ids[key] = e
	}
	e.Identity, e.LoginName, e.Resource, e.Method = d.Identity, req.LoginName, d.Resource, d.Method
	e.ClientAddr, e.Groups, e.GroupCount = req.ClientAddr, groups, count
	e.LastSeen = now
	e.Connections++
}

func (r *recentIdentities) evictOldest() {
	var oldest string
	var at time.Time
	for k, e := range r.ids {
		if oldest == "" || e.LastSeen.Before(at) {
			oldest, at = k, e.LastSeen
		}
	}
	delete(r.ids, oldest)
}

func (r *recentIdentities) list() []IdentitySeen {
	r.mu.Lock()
	out := make([]IdentitySeen, 0, len(r.ids))
	for _, e := range r.ids {
		c := *e
		c.Groups = append([]string(nil), e.Groups...)
		out = append(out, c)
	}
	r.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].LastSeen.After(out[j].LastSeen) })
	return out
}

// RecentIdentities lists the identities let in lately (up to 256), the
// most recent first. Only this process's connections are counted; each
// replica keeps its own record.
func (s *Server) RecentIdentities() []IdentitySeen { return s.recent.list() }

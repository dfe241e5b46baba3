package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"time"
)

// request is one of the operator's requests, as the API server's audit log
// records it.
type request struct {
	at                                           time.Time // when the server received it
	verb, resource, subresource, namespace, name string
	code                                         int // the response's HTTP status
}

// auditEvent is what the program reads of an audit event.
type auditEvent struct {
	Stage string `json:"stage"`
	Verb  string `json:"verb"`
	User  struct {
		Username string `json:"username"`
	} `json:"user"`
	ObjectRef *struct {
		Resource    string `json:"resource"`
		Namespace   string `json:"namespace"`
		Name        string `json:"name"`
		Subresource string `json:"subresource"`
	} `json:"objectRef"`
	ResponseStatus *struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
	RequestReceivedTimestamp time.Time `json:"requestReceivedTimestamp"`
}

// readAudit returns the requests of user in the audit log, in the order the
// server logged them. A request counts once: at ResponseComplete, or for a
// watch at ResponseStarted, since a watch completes only when it ends,
// minutes later, or never within the run.
func readAudit(path, user string) ([]request, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open the audit log: %w", err)
	}
	defer f.Close()
	var out []request
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		var e auditEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("parse the audit log %s: %w", path, err)
		}
		watch := e.Verb == "watch"
		if e.User.Username != user || (watch && e.Stage != "ResponseStarted") || (!watch && e.Stage != "ResponseComplete") {
			continue
		}
		r := request{at: e.RequestReceivedTimestamp, verb: e.Verb}
		if e.ResponseStatus != nil {
			r.code = e.ResponseStatus.Code
		}
		if e.ObjectRef != nil {
			r.resource, r.subresource, r.namespace, r.name = e.ObjectRef.Resource, e.ObjectRef.Subresource, e.ObjectRef.Namespace, e.ObjectRef.Name
		}
		out = append(out, r)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read the audit log %s: %w", path, err)
	}
	return out, nil
}

// failed says whether the server refused the request or failed it: a
// conflict, a not found, a timeout.
func (r request) failed() bool { return r.code >= 300 }

func (r request) write() bool {
	switch r.verb {
	case "create", "update", "patch", "delete", "deletecollection":
		return true
	}
	return false
}

// what names the object kind of a request: "deployments",
// "keepalivepolicies/status".
func (r request) what() string {
	if r.subresource != "" {
		return r.resource + "/" + r.subresource
	}
	return r.resource
}

// tally counts requests by verb, and writes by verb and resource.
type tally struct {
	total  int
	failed int
	verbs  map[string]int
	writes map[string]int
}

// count tallies the requests received in [from, to).
func count(reqs []request, from, to time.Time) tally {
	t := tally{verbs: map[string]int{}, writes: map[string]int{}}
	for _, r := range reqs {
		if r.at.Before(from) || !r.at.Before(to) {
			continue
		}
		t.total++
		t.verbs[r.verb]++
		if r.failed() {
			t.failed++
		}
		if r.write() {
			t.writes[r.verb+" "+r.what()]++
		}
	}
	return t
}

// deploymentWrites counts the template writes (patch or update of the
// Deployment itself, not its status) per Deployment; a write the server
// refused, a conflict, wrote nothing.
func deploymentWrites(reqs []request) map[string]int {
	out := map[string]int{}
	for _, r := range reqs {
		if r.resource == "deployments" && r.subresource == "" && (r.verb == "patch" || r.verb == "update") && !r.failed() {
			out[r.namespace+"/"+r.name]++
		}
	}
	return out
}

// statusWrites counts the status writes the server took of each policy in
// [from, to), in total and in the busiest second counted from from.
func statusWrites(reqs []request, from, to time.Time) (total map[string]int, busiest map[string]int) {
	total, busiest = map[string]int{}, map[string]int{}
	buckets := map[string]map[int]int{}
	for _, r := range reqs {
		if r.at.Before(from) || !r.at.Before(to) || r.failed() || r.subresource != "status" || (r.verb != "patch" && r.verb != "update") ||
			(r.resource != "keepalivepolicies" && r.resource != "clusterkeepalivepolicies") {
			continue
		}
		key := r.namespace + "/" + r.name
		total[key]++
		if buckets[key] == nil {
			buckets[key] = map[int]int{}
		}
		s := int(r.at.Sub(from) / time.Second)
		buckets[key][s]++
		busiest[key] = max(busiest[key], buckets[key][s])
	}
	return total, busiest
}

// format writes counts as "get 12, list 3", largest first.
func format(counts map[string]int) string {
	if len(counts) == 0 {
		return "none"
	}
	keys := slices.Sorted(maps.Keys(counts))
	slices.SortStableFunc(keys, func(a, b string) int { return counts[b] - counts[a] })
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, counts[k])
	}
	return strings.Join(parts, ", ")
}

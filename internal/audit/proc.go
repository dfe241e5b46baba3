package audit

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/keepalive-operator/keepalive-operator/internal/keepalive"
)

// podUID matches the pod's UID in a cgroup path, as the kubelet names pod
// cgroups with either driver: .../pod<uid>/... (cgroupfs) or
// .../kubepods-<qos>-pod<uid with _>.slice/... (systemd).
var podUID = regexp.MustCompile(`pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})`)

// PodUIDOf reads the UID of the pod a process belongs to from the contents
// of /proc/<pid>/cgroup, or "" for a process outside every pod.
func PodUIDOf(cgroup []byte) string {
	for line := range bytes.SplitSeq(cgroup, []byte("\n")) {
		// hierarchy-ID:controllers:path; the path may hold colons.
		parts := bytes.SplitN(line, []byte(":"), 3)
		if len(parts) != 3 || !bytes.Contains(parts[2], []byte("kubepods")) {
			continue
		}
		if m := podUID.FindSubmatch(parts[2]); m != nil {
			return strings.ReplaceAll(string(m[1]), "_", "-")
		}
	}
	return ""
}

// PodProcesses maps the UID of each pod with a process on this machine to
// one of its processes: the containers and sandbox of a pod share one
// network namespace, so any of them shows its sockets. proc is the
// host's /proc, seen through hostPID.
func PodProcesses(proc string) (map[string]int, error) {
	entries, err := os.ReadDir(proc)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", proc, err)
	}
	out := map[string]int{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !e.IsDir() {
			continue
		}
		cgroup, err := os.ReadFile(filepath.Join(proc, e.Name(), "cgroup"))
		if err != nil {
			continue // gone meanwhile
		}
		if uid := PodUIDOf(cgroup); uid != "" {
			if old, ok := out[uid]; !ok || pid < old {
				out[uid] = pid
			}
		}
	}
	return out, nil
}

// ReadSockets reads the TCP sockets of the network namespace of a process
// from proc/<pid>/net/tcp and tcp6, which any user may read: no payload,
// no capability. A machine without IPv6 has no tcp6.
func ReadSockets(proc string, pid int) ([]keepalive.Socket, error) {
	var out []keepalive.Socket
	for _, name := range []string{"tcp", "tcp6"} {
		path := filepath.Join(proc, strconv.Itoa(pid), "net", name)
		data, err := os.ReadFile(path)
		if name == "tcp6" && errors.Is(err, fs.ErrNotExist) {
			if _, statErr := os.Stat(filepath.Join(proc, strconv.Itoa(pid))); statErr == nil {
				continue
			}
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		socks, err := keepalive.ParseProcNetTCP(data)
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", path, err)
		}
		out = append(out, socks...)
	}
	return out, nil
}

package main

import (
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

// noopCommand, as the first argument, makes the program the no-op webhook:
// its own process, so that its CPU and memory are measured apart.
const noopCommand = "noop-webhook"

// Where the no-op webhook answers, and the constant-patch one.
const (
	noopPath  = "/noop"
	patchPath = "/patch"
)

// serveNoop serves, over TLS and HTTP/1.1 like the operator's webhook server
// (whose --enable-http2 is off by default), a webhook that allows every
// request with no patch: what any webhook costs before it does anything;
// and one that answers every request with the same JSON patch adding
// wantSysctls: what any webhook that adds them costs, the API server's
// work on the patch included.
func serveNoop(args []string) error {
	fs := flag.NewFlagSet(noopCommand, flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:9443", "Address to listen on.")
	certDir := fs.String("cert-dir", "", "Folder with tls.crt and tls.key.")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(*certDir, "tls.crt"), filepath.Join(*certDir, "tls.key"))
	if err != nil {
		return fmt.Errorf("load the serving certificate: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+noopPath, func(w http.ResponseWriter, r *http.Request) { answer(w, r, nil) })
	patch, err := json.Marshal([]map[string]any{{"op": "add", "path": "/spec/securityContext/sysctls", "value": wantSysctls}})
	if err != nil {
		return err
	}
	mux.HandleFunc("POST "+patchPath, func(w http.ResponseWriter, r *http.Request) { answer(w, r, patch) })
	srv := &http.Server{
		Addr:              *addr,
		Handler:           mux,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){}, // HTTP/1.1 only
		ReadHeaderTimeout: 10 * time.Second,
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	go func() {
		<-sig
		_ = srv.Close()
	}()
	if err := srv.ListenAndServeTLS("", ""); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// answer allows the AdmissionReview's object, with patch if not nil.
func answer(w http.ResponseWriter, r *http.Request, patch []byte) {
	var review struct {
		Request struct {
			UID string `json:"uid"`
		} `json:"request"`
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 7<<20))
	if err == nil {
		err = json.Unmarshal(body, &review)
	}
	if err != nil || review.Request.UID == "" {
		http.Error(w, "not an AdmissionReview", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	uid, _ := json.Marshal(review.Request.UID)
	if patch == nil {
		fmt.Fprintf(w, `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":%s,"allowed":true}}`, uid)
		return
	}
	fmt.Fprintf(w, `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":%s,"allowed":true,"patchType":"JSONPatch","patch":%q}}`,
		uid, base64.StdEncoding.EncodeToString(patch))
}

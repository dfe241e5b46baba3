package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
)

// caHandover is the manager the certificate rotator is given: its client
// keeps in the webhook configuration's caBundle, after a new CA, the CA that
// the new one replaces. cert-controller writes a new CA and serving
// certificate to the Secret and at once sets the caBundle to the new CA
// alone, while the webhook server serves the old certificate until the
// kubelet projects the Secret into its folder (a minute or more). Without the
// old CA the API server cannot verify the server meanwhile and, failing
// open, admits pods without the values.
type caHandover struct{ manager.Manager }

func (m caHandover) GetClient() client.Client {
	return caHandoverClient{Client: m.Manager.GetClient(), live: m.GetAPIReader()}
}

type caHandoverClient struct {
	client.Client
	live client.Reader
}

func (c caHandoverClient) Update(ctx context.Context, obj client.Object, opts ...client.UpdateOption) error {
	if u, ok := obj.(*unstructured.Unstructured); ok && u.GetKind() == "MutatingWebhookConfiguration" {
		if err := keepReplacedCA(ctx, c.live, u); err != nil {
			return err
		}
	}
	return c.Client.Update(ctx, obj, opts...)
}

// keepReplacedCA appends to each webhook's new caBundle the CA it replaces
// in the stored configuration, as withReplacedCA says.
func keepReplacedCA(ctx context.Context, live client.Reader, u *unstructured.Unstructured) error {
	var stored admissionregistrationv1.MutatingWebhookConfiguration
	if err := live.Get(ctx, client.ObjectKeyFromObject(u), &stored); err != nil {
		return fmt.Errorf("read MutatingWebhookConfiguration %s: %w", u.GetName(), err)
	}
	old := map[string][]byte{}
	for _, wh := range stored.Webhooks {
		old[wh.Name] = wh.ClientConfig.CABundle
	}
	hooks, _, err := unstructured.NestedSlice(u.Object, "webhooks")
	if err != nil {
		return err
	}
	for _, h := range hooks {
		hook, ok := h.(map[string]any)
		if !ok {
			continue
		}
		name, _, _ := unstructured.NestedString(hook, "name")
		b64, _, _ := unstructured.NestedString(hook, "clientConfig", "caBundle")
		bundle, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			return fmt.Errorf("caBundle of webhook %s: %w", name, err)
		}
		merged := base64.StdEncoding.EncodeToString(withReplacedCA(bundle, old[name], time.Now()))
		if err := unstructured.SetNestedField(hook, merged, "clientConfig", "caBundle"); err != nil {
			return err
		}
	}
	return unstructured.SetNestedSlice(u.Object, hooks, "webhooks")
}

// withReplacedCA is the bundle next followed by the first certificate of
// prev that next lacks and that has not expired at now: the CA being
// replaced stays trusted until the next change of CA, or its expiry, and
// the bundle never holds more than two CAs.
func withReplacedCA(next, prev []byte, now time.Time) []byte {
	have := map[string]bool{}
	for rest := next; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		have[string(b.Bytes)] = true
	}
	for rest := prev; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return next
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if b.Type != "CERTIFICATE" || err != nil || have[string(b.Bytes)] || !now.Before(cert.NotAfter) {
			continue
		}
		return append(bytes.Clone(next), pem.EncodeToMemory(b)...)
	}
}

"""The sidecar injector: a mutating admission webhook (`meshcp inject`).

An admission request goes: `review.parse_review` (is the body an AdmissionReview? no:
HTTP 400), `decision.pod_creation` (is it a Pod's creation? no: allowed untouched),
`decision.decide` (should the pod get a sidecar: skip, deny with the reason, or a
candidate); for a candidate `admission.Injector` names the proxy and issues its xDS
certificate, `bootstrap_secret` builds the Secret it boots from and `pod_patch` the
JSONPatch; `review` answers in the apiVersion the request came in.

Pure (no I/O): `review`, `decision`, `pod_patch`, `probe_rewrite` (probes pointed at the
sidecar), `bootstrap_secret`, `template` (the names and the `SidecarTemplate`),
`patch_ops` (JSONPatch helpers), `fields` (tolerant readers), `settings`, `metrics`.

I/O: `admission` (one answer: certificate, Secret), `app` (the HTTP routes), `tls_reload`
(the serving certificate), `server` (the process), and `kube`, the only module here that
talks to Kubernetes.
"""

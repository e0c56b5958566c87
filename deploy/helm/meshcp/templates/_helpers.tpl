{{/* The image both Deployments run. */}}
{{- define "meshcp.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Labels of one component's objects; the argument is (list $ "controller"). */}}
{{- define "meshcp.labels" -}}
app.kubernetes.io/name: meshcp
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/*
The certificate options of `meshcp serve` and `meshcp inject`, as container args: both sign
with the same provider (and the injector opens the controller's internal CA read-only).
*/}}
{{- define "meshcp.caArgs" -}}
{{- $ca := .Values.certificateProvider -}}
- --trust-domain={{ .Values.trustDomain }}
- --cert-validity={{ .Values.certValidity }}
{{- if ne $ca.keyType "ecdsa-p256" }}
- --ca-key-type={{ $ca.keyType }}
{{- end }}
{{- if eq $ca.kind "internal" }}
- --ca-secret={{ .Release.Namespace }}/meshcp-ca
{{- else if eq $ca.kind "cfssl" }}
- --ca-provider=cfssl
- --cfssl-url={{ required "certificateProvider.cfssl.url is required with certificateProvider.kind cfssl" $ca.cfssl.url }}
{{- else if eq $ca.kind "vault" }}
- --ca-provider=vault
- --vault-address={{ required "certificateProvider.vault.address is required with certificateProvider.kind vault" $ca.vault.address }}
- --vault-role={{ $ca.vault.role }}
- --vault-mount={{ $ca.vault.mount }}
{{- else if eq $ca.kind "cert-manager" }}
- --ca-provider=cert-manager
- --cert-manager-issuer={{ required "certificateProvider.certManager.issuer is required with certificateProvider.kind cert-manager" $ca.certManager.issuer }}
- --cert-manager-issuer-kind={{ $ca.certManager.issuerKind }}
- --cert-manager-namespace={{ .Release.Namespace }}
{{- else }}
{{- fail (printf "certificateProvider.kind %q is not one of internal, cfssl, vault, cert-manager" $ca.kind) }}
{{- end }}
{{- end -}}

{{/* The Vault token from its Secret, as the container's env (nothing for other providers). */}}
{{- define "meshcp.caEnv" -}}
{{- if eq .Values.certificateProvider.kind "vault" }}
env:
- name: VAULT_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.certificateProvider.vault.tokenSecret.name }}
      key: {{ .Values.certificateProvider.vault.tokenSecret.key }}
{{- end }}
{{- end -}}

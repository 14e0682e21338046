# kind: verify

# kind: verify
# The bind with the secret under test is the check; "Who am I?" (RFC 4532) then confirms the
# session belongs to the credential's own entry and not to some other one.
whoami: {{ user_dn }}

# kind: verify
# Log in with the secret under test and confirm the session belongs to the expected account.
exec: id -un
expect: (?m)^{{ username | regex }}$
exit: 0

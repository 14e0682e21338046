-- kind: verify
-- Log in with the secret under test and confirm the session belongs to the expected role.
SELECT current_user;
-- expect: {{ username }}

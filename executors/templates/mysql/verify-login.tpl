-- kind: verify
-- Log in with the secret under test and confirm the session is the expected account
-- (CURRENT_USER() is 'user@host' of the matched account).
SELECT CURRENT_USER();
-- expect: {{ username }}@.*

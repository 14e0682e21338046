# kind: verify
# RabbitMQ management API: log in with the secret under test and check the session is the
# expected user's. Only users with a management tag (management, monitoring, policymaker,
# administrator) may use the API; others get 401 "Not management user", which is not a refusal
# of their secret.
request: GET /api/whoami
denied: Not management user
expect: 200
check: $.name == {{ username }}

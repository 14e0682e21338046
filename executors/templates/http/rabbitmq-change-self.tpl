# kind: change
# RabbitMQ management API, self-change. RabbitMQ lets only users tagged "administrator" change a
# password, their own included (any other user gets 401 "Not administrator user"): this template
# works for administrators only; for any other user, give the credential an administrator auth
# credential (http/rabbitmq-change-admin).
request: GET /api/users/{{ username }}
denied: Not administrator user
expect: 200
capture: tags = $.tags

request: PUT /api/users/{{ username }}
denied: Not administrator user
body: {"password": {{ new_password }}, "tags": {{ values.tags }}}
expect: 204

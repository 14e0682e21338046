# kind: change
# RabbitMQ management API, change through an administrator (the auth credential). The user's tags
# are read first and sent back unchanged: a PUT without them would drop the user's tags.
request: GET /api/users/{{ username }}
denied: Not administrator user
expect: 200
capture: tags = $.tags

request: PUT /api/users/{{ username }}
denied: Not administrator user
body: {"password": {{ new_password }}, "tags": {{ values.tags }}}
expect: 204

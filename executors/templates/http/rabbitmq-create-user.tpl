# kind: jit-create
# RabbitMQ management API: a just-in-time user with the new password, through an administrator
# (the auth credential). A PUT on an existing user would overwrite its password and tags, so the
# user must not exist yet (404); the PUT must then create it (201). Tagged "management" so it may
# use the management API (and be verified there); it has no vhost permissions: add a
# "PUT /api/permissions/<vhost>/{{ username }}" request in a copy of this template for what the
# session needs.
request: GET /api/users/{{ username }}
denied: Not administrator user
expect: 404

request: PUT /api/users/{{ username }}
denied: Not administrator user
body: {"password": {{ new_password }}, "tags": "management"}
expect: 201

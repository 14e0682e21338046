# kind: jit-create
# RabbitMQ management API: a just-in-time user with the new password, through an administrator
# (the auth credential). Tagged "management" so it may use the management API (and be verified
# there); it has no vhost permissions: add a "PUT /api/permissions/<vhost>/{{ username }}" request
# in a copy of this template for what the session needs. 201: created; 204 would mean it existed.
request: PUT /api/users/{{ username }}
denied: Not administrator user
body: {"password": {{ new_password }}, "tags": "management"}
expect: 201

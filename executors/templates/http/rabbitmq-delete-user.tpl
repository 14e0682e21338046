# kind: jit-remove
# RabbitMQ management API: remove a just-in-time user, through an administrator. A user already
# gone answers 404; Keyturn then sees its login refused, which is what was asked for.
request: DELETE /api/users/{{ username }}
denied: Not administrator user
expect: 204

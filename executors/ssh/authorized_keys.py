"""Editing an account's ``authorized_keys`` on the target, by exact key, atomically.

The ssh key templates (``# kind: key-install`` / ``key-remove``) run the shell program below as
the account (itself, or through sudo) with ``sh -c {{ values.authorized_keys_edit }} keyturn
add|remove FILE "PUBLIC KEY LINE"``; the executor puts the program and the device's file in
the template's values, so a template stays one readable line and every shipped template edits
the same way.

What it guarantees:

- Only lines holding the key's base64 blob as a whole field are touched: every other line
  (unrelated keys, their options, comments, blank lines) is copied byte for byte. ``add`` does
  nothing when a line already holds the key (whatever its options), so it is idempotent, and so
  is ``remove``.
- The new file is written beside the old one and renamed over it (``mv`` in one directory is an
  atomic rename): a crash mid-edit leaves the old file whole, never half a file; the leftover
  temporary file (``authorized_keys.keyturn.*``) is never read by sshd.
- Concurrent edits: Keyturn's own edits of one file take an exclusive ``flock`` on a lock file
  beside it (credentials sharing an account on a key target run side by side); an editor that
  does not lock is detected by comparing the file with the copy the edit started from just
  before the rename, and the edit starts again (five tries).
"""

from __future__ import annotations

import dataclasses

from templating import TemplateContext

DEFAULT_FILE = ".ssh/authorized_keys"  # sshd's AuthorizedKeysFile default, relative to the home
OPTION = "authorized_keys_file"  # the device option naming another file (sshd's %u allowed)

# POSIX sh; $1 add|remove, $2 the file (relative to the home, or absolute), $3 the key line.
# The home comes from the password database: under sudo, $HOME may be the invoking account's.
EDIT_PROGRAM = r"""set -eu
action=$1; file=$2; key=$3
home=$(getent passwd "$(id -un)" | cut -d: -f6)
case $file in /*) ;; *) file=$home/$file ;; esac
blob=$(printf '%s\n' "$key" | awk '{print $2}')
if [ -z "$blob" ]; then echo 'keyturn-keys: no key given' >&2; exit 2; fi
umask 077
dir=$(dirname "$file")
mkdir -p "$dir"
exec 9>>"$dir/.keyturn-authorized_keys.lock"
if command -v flock >/dev/null 2>&1; then flock -w 30 9; fi
[ -e "$file" ] || : > "$file"
tries=0
while :; do
  snap=$(mktemp "$file.keyturn.XXXXXX"); tmp=$(mktemp "$file.keyturn.XXXXXX")
  cat "$file" > "$snap"
  if [ "$action" = add ]; then
    if awk -v b="$blob" '{for(i=1;i<=NF;i++) if($i==b) f=1} END{exit f?0:1}' "$snap"; then
      rm -f "$snap" "$tmp"; echo 'keyturn-keys-ok: already present'; exit 0
    fi
    cat "$snap" > "$tmp"
    if [ -s "$tmp" ] && [ "$(tail -c 1 "$tmp" | wc -l)" -eq 0 ]; then echo >> "$tmp"; fi
    printf '%s\n' "$key" >> "$tmp"
  elif [ "$action" = remove ]; then
    awk -v b="$blob" '{for(i=1;i<=NF;i++) if($i==b) next; print}' "$snap" > "$tmp"
  else
    rm -f "$snap" "$tmp"; echo "keyturn-keys: unknown action $action" >&2; exit 2
  fi
  if cmp -s "$file" "$snap"; then
    chmod 600 "$tmp"; mv -f "$tmp" "$file"; rm -f "$snap"
    echo "keyturn-keys-ok: $action"; exit 0
  fi
  rm -f "$snap" "$tmp"
  tries=$((tries + 1))
  if [ "$tries" -ge 5 ]; then echo 'keyturn-keys: the file keeps changing' >&2; exit 3; fi
done
"""


def file_option_problem(value: object) -> str | None:
    """Why an ``authorized_keys_file`` device option cannot be used, or None."""
    if not isinstance(value, str) or not value.strip():
        return "must be a path (relative to the account's home, or absolute)"
    if any(c in value for c in "\n\r\0") or len(value) > 1024:
        return "must be one line of at most 1024 characters"
    return None


def with_edit_values(context: TemplateContext, options: dict[str, object]) -> TemplateContext:
    """The context with the edit program and the device's authorized_keys file (``%u``: the
    account's name, as in sshd_config) in its values, for the key templates."""
    file = str(options.get(OPTION) or DEFAULT_FILE).replace("%u", context.username)
    values = {**context.values, "authorized_keys_edit": EDIT_PROGRAM, "authorized_keys_file": file}
    return dataclasses.replace(context, values=values)

#!/bin/bash
# Entrypoint of the training image: run the command as the caller, so files written into mounted
# folders belong to them and not to root. With USER_ID and GROUP_ID set (containers/run.sh sets
# them), make that user and group if the image lacks them, give the user a home inside the
# container, and drop to them; without them (or for root), run the command as it is.
set -euo pipefail

if [[ -z ${USER_ID:-} && -z ${GROUP_ID:-} ]] || [[ ${USER_ID:-} == 0 ]]; then
    exec "$@"
fi
if [[ ! ${USER_ID:-} =~ ^[0-9]+$ || ! ${GROUP_ID:-} =~ ^[0-9]+$ ]]; then
    echo "doctrain-entrypoint: USER_ID and GROUP_ID must both be numeric ids (got '${USER_ID:-}' and '${GROUP_ID:-}')" >&2
    exit 2
fi

getent group "$GROUP_ID" >/dev/null || groupadd --gid "$GROUP_ID" doctrain
if ! user=$(getent passwd "$USER_ID" | cut -d: -f1); then
    useradd --uid "$USER_ID" --gid "$GROUP_ID" --no-create-home --home-dir /home/doctrain \
        --shell /bin/bash doctrain
    user=doctrain
fi
# Only the home folder is made theirs; the mounted checkout is never chowned.
export HOME=/home/$user USER=$user
mkdir -p "$HOME"
chown "$USER_ID:$GROUP_ID" "$HOME"
exec setpriv --reuid="$USER_ID" --regid="$GROUP_ID" --init-groups "$@"

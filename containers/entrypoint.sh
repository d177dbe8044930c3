#!/bin/bash
# Entrypoint of the training image: run the command as the caller, so files written into mounted
# folders belong to them and not to root. With USER_ID and GROUP_ID set (containers/run.sh sets
# them), make that user and group if the image lacks them, give the user a home inside the
# container, and drop to them; without them (or for root), run the command as it is.
set -euo pipefail

fail() {
    echo "doctrain-entrypoint: $*" >&2
    exit 2
}

if [[ -z ${USER_ID:-} && -z ${GROUP_ID:-} ]]; then
    exec "$@"
fi
# Ids are numbers, compared as numbers: USER_ID=00 is root too.
[[ ${USER_ID:-} =~ ^[0-9]+$ ]] || fail "USER_ID must be a numeric id (got '${USER_ID:-}')"
USER_ID=$((10#$USER_ID))
if ((USER_ID == 0)); then
    # Root keeps root's groups; a group given with it would be silently ignored, so it is refused.
    [[ -z ${GROUP_ID:-} || ${GROUP_ID} =~ ^0+$ ]] ||
        fail "USER_ID=0 runs as root, which keeps root's group: unset GROUP_ID (got '${GROUP_ID}') or give a non-root USER_ID"
    exec "$@"
fi
[[ ${GROUP_ID:-} =~ ^[0-9]+$ ]] || fail "GROUP_ID must be a numeric id (got '${GROUP_ID:-}')"
GROUP_ID=$((10#$GROUP_ID))

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

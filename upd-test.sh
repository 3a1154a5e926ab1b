apt_lock_timeout=300
log() {
    printf 'install-test-deps: %s\n' "$*"
}
die() {
    printf 'install-test-deps: error: %s\n' "$*" >&2
    exit 1
}
apt_get_update() {
    local deadline=$((SECONDS + apt_lock_timeout))
    local output
    while true; do
        if output=$("${as_root[@]}" apt-get -o DPkg::Lock::Timeout="$apt_lock_timeout" update 2>&1); then
            return 0
        fi
        if [[ $output != *"Could not get lock"* ]]; then
            printf '%s\n' "$output" >&2
            die "apt-get update failed"
        fi
        if ((SECONDS >= deadline)); then
            printf '%s\n' "$output" >&2
            die "apt-get update: package lists still locked after ${apt_lock_timeout}s"
        fi
        log "waiting for another apt process to release the package-lists lock"
        sleep 5
    done
}
as_root=(); start=$SECONDS; apt_get_update; echo "update ok after $((SECONDS-start))s"

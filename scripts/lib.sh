# Shell helpers shared by scripts/run.sh and scripts/stop.sh (sourced, not run).

# alive PID: the process exists and is not a zombie.
alive() {
    local pid="$1" stat
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    if [[ -r "/proc/$pid/stat" ]]; then
        stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
        stat="${stat##*) }"
        [[ "${stat:0:1}" != "Z" && "${stat:0:1}" != "X" ]]
    else
        kill -0 "$pid" 2>/dev/null
    fi
}

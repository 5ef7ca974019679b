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

# is_prog PID NAME: the process's command line mentions NAME (guards against pid reuse).
is_prog() {
    local pid="$1" name="$2" cmd
    if [[ -r "/proc/$pid/cmdline" ]]; then
        cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    else
        cmd="$(ps -o command= -p "$pid" 2>/dev/null)" || return 1
    fi
    [[ "$cmd" == *"$name"* ]]
}

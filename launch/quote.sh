# Shell quoting for the launchers' dry-run mode (sourced, not run): every printed command
# line pastes back into a shell as the very words it would have run.

# One word, quoted only when it needs to be; an --opt=VALUE word quotes only its VALUE.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then printf '%s' "$1"
  elif [[ $1 =~ ^(--[A-Za-z0-9_.-]+=)(.+)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"; quote "${BASH_REMATCH[2]}"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

# A whole command on one line.
quote_line() {
  local out="" word
  for word in "$@"; do out+="${out:+ }$(quote "$word")"; done
  printf '%s\n' "$out"
}

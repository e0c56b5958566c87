"""`meshcp completion bash|zsh`: a completion script made from the parser itself, so it
never lags behind a new command or option.

The script knows, for each command path (`proxy config`), its subcommands, its options,
and the values an option takes (its choices, or file names for a path).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from meshcp.cli.parser import build_parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {name: sub for name, sub in action.choices.items() if not name.startswith("_")}
    return {}


def _walk(parser: argparse.ArgumentParser, path: str = "") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for name, sub in _subparsers(parser).items():
        yield from _walk(sub, f"{path} {name}")


def _values(action: argparse.Action) -> str:
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        return " ".join(str(choice) for choice in action.choices)
    if action.type is Path:
        return "__files__"
    return ""


def bash_script(parser: argparse.ArgumentParser) -> str:
    commands, options, values = [], [], []
    for path, sub in _walk(parser):
        names = " ".join(_subparsers(sub))
        flags = [
            flag
            for action in sub._actions
            if action.help != argparse.SUPPRESS
            for flag in action.option_strings
        ]
        commands.append(f'    "{path}") echo "{names}" ;;')
        options.append(f'    "{path}") echo "{" ".join(flags)}" ;;')
        for action in sub._actions:
            taken = _values(action) if action.option_strings and action.nargs != 0 else ""
            for flag in action.option_strings if taken else ():
                values.append(f'    "{path}|{flag}") echo "{taken}" ;;')
    body = "\n".join
    return f"""# meshcp completion for bash: source <(meshcp completion bash)
_meshcp_commands() {{
  case "$1" in
{body(commands)}
  esac
}}
_meshcp_options() {{
  case "$1" in
{body(options)}
  esac
}}
_meshcp_values() {{
  case "$1" in
{body(values)}
  esac
}}
_meshcp() {{
  local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}" path="" i word subs found
  for ((i = 1; i < COMP_CWORD; i++)); do
    word="${{COMP_WORDS[i]}}"
    subs=" $(_meshcp_commands "$path") "
    [[ "$word" != -* && "$subs" == *" $word "* ]] && path="$path $word"
  done
  found="$(_meshcp_values "$path|$prev")"
  if [[ "$found" == "__files__" ]]; then
    COMPREPLY=($(compgen -f -- "$cur"))
  elif [[ -n "$found" ]]; then
    COMPREPLY=($(compgen -W "$found" -- "$cur"))
  elif [[ "$cur" == -* ]]; then
    COMPREPLY=($(compgen -W "$(_meshcp_options "$path")" -- "$cur"))
  else
    COMPREPLY=($(compgen -W "$(_meshcp_commands "$path")" -- "$cur"))
    [[ ${{#COMPREPLY[@]}} -eq 0 ]] && COMPREPLY=($(compgen -f -- "$cur"))
  fi
  return 0
}}
complete -F _meshcp meshcp
"""


def command(args: argparse.Namespace) -> int:
    script = bash_script(build_parser())
    if args.shell == "zsh":  # zsh runs bash completion functions through bashcompinit
        script = "autoload -U +X compinit && compinit\nautoload -U +X bashcompinit && bashcompinit\n" + script
    print(script, end="")
    return 0

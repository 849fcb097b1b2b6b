from .cli import main

raise SystemExit(main(fast_exit=True))

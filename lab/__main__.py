from lab.cli import main
from lab.device import keep_freed_memory

keep_freed_memory()  # the lab's own process, before its first tensor: importing lab alone changes nothing global
raise SystemExit(main())

"""python -m lstmcli"""

from .cli import main

main()

import sys

from imapproxy.cli import main

sys.exit(main())

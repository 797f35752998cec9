import sys

from relayd.cli import main

sys.exit(main())

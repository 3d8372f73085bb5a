import sys

from fastdqn.cli import main

sys.exit(main())

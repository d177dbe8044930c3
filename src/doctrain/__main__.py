import sys

from doctrain.cli import main

sys.exit(main())

import sys

from workspace_secrets.cli import main

sys.exit(main())

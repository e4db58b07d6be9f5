import sys

from dynasor_client.cli import main

sys.exit(main())

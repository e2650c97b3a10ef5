// Prisma 7 reads its configuration from here. `prisma generate` needs no database; the server
// gets its connection string from DATABASE_URL at run time (src/prisma.service.ts).
import { defineConfig } from 'prisma/config';

export default defineConfig({
  schema: 'prisma/schema.prisma',
});

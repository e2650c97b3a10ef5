// What the seed's DevicesService does on connect: set lastSeen to now and status to online, and
// keep what the device reported (IP address, app version). One UPDATE per heartbeat, answered
// after it is committed.
import { Injectable, NotFoundException } from '@nestjs/common';
import { Prisma } from './generated/prisma/client';
import { ConnectDeviceDto } from './connect-device.dto';
import { PrismaService } from './prisma.service';

@Injectable()
export class DevicesService {
  constructor(private readonly prisma: PrismaService) {}

  async connect(dto: ConnectDeviceDto) {
    try {
      return await this.prisma.device.update({
        where: { serialNumber: dto.serialNumber },
        data: {
          status: 'online',
          lastSeen: new Date(),
          ipAddress: dto.ipAddress,
          appVersion: dto.appVersion,
        },
        select: { id: true, serialNumber: true, status: true, lastSeen: true },
      });
    } catch (error) {
      if (error instanceof Prisma.PrismaClientKnownRequestError && error.code === 'P2025') {
        throw new NotFoundException(`no device with serial number ${dto.serialNumber}`);
      }
      throw error;
    }
  }
}
